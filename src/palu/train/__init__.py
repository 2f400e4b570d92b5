"""One training loop for fine-tuning and unlearning, and the data plumbing around it."""
