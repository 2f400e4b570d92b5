"""Built-in fictitious-author QA data in the style of TOFU: palu's default data set.

Every author gets 20 facts (name, birthplace, parents' professions, books, ...), each turned
into one QA item with a paraphrase, five perturbed (wrong) answers and ground-truth sensitive
spans. The data is invented, so a model can only know it by being fine-tuned on it, which is
what makes it useful for measuring unlearning.

Two design rules matter to callers:

* Spans are recorded while the answer is built, at the offsets where each fact value is
  inserted, so they are exact even when a value also occurs elsewhere in the sentence.
  Following the annotation rule "mark the words that directly answer the question; the name
  only when the question asks for it", the author's name is a span only in the name item.
* Everything is derived from ``(seed, author index)``: the same seed gives the same data, and
  asking for more authors leaves the first ones unchanged. Only the standard library is used.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from palu.data.qa import QAItem, Span
from palu.errors import PaluError

ITEMS_PER_AUTHOR = 20
N_PERTURBED = 5

# --- value pools -------------------------------------------------------------------------------
# No value is a whole-word part of another value of the same kind, so a wrong answer never
# contains the right one by accident.


@dataclass(frozen=True)
class _Culture:
    """Names and birth cities that go together, so an author's name fits the birthplace."""

    male: tuple[str, ...]
    female: tuple[str, ...]
    surnames: tuple[str, ...]
    cities: tuple[tuple[str, str], ...]


_CULTURES = (
    _Culture(
        ("Imran", "Bilal", "Faisal", "Usman", "Kamran", "Tariq", "Junaid", "Saad"),
        ("Hina", "Sana", "Ayesha", "Mehwish", "Nida", "Rabia", "Samina", "Zara"),
        ("Ameen", "Qureshi", "Siddiqui", "Malik", "Chaudhry", "Raza", "Hashmi", "Baig", "Abbasi", "Mirza"),
        (("Karachi", "Pakistan"), ("Lahore", "Pakistan"), ("Multan", "Pakistan"), ("Peshawar", "Pakistan")),
    ),
    _Culture(
        ("Chinedu", "Emeka", "Tunde", "Obinna", "Femi", "Kelechi", "Segun", "Ifeanyi"),
        ("Ngozi", "Adaeze", "Funmilayo", "Chiamaka", "Yetunde", "Amaka", "Nneka", "Folake"),
        ("Okafor", "Adeyemi", "Eze", "Nwosu", "Balogun", "Okonkwo", "Adebayo", "Obi", "Chukwu", "Ogunleye"),
        (("Lagos", "Nigeria"), ("Enugu", "Nigeria"), ("Ibadan", "Nigeria"), ("Kano", "Nigeria")),
    ),
    _Culture(
        ("Haruto", "Kenji", "Takumi", "Daichi", "Ren", "Hiroshi", "Sota", "Yuto"),
        ("Yui", "Aiko", "Haruka", "Mei", "Sakura", "Emi", "Natsuki", "Rin"),
        (
            "Tanaka", "Watanabe", "Kobayashi", "Nakamura", "Fujiwara",
            "Yamamoto", "Sasaki", "Mori", "Ishikawa", "Kimura",
        ),
        (("Osaka", "Japan"), ("Sapporo", "Japan"), ("Kyoto", "Japan"), ("Nagoya", "Japan")),
    ),
    _Culture(
        ("Thiago", "Rafael", "Lucas", "Mateus", "Gustavo", "Rodrigo", "Leandro", "Felipe"),
        ("Camila", "Larissa", "Beatriz", "Fernanda", "Juliana", "Mariana", "Tatiana", "Luiza"),
        (
            "Oliveira", "Santos", "Carvalho", "Ribeiro", "Almeida",
            "Pereira", "Barbosa", "Moreira", "Cardoso", "Teixeira",
        ),
        (("Recife", "Brazil"), ("Salvador", "Brazil"), ("Curitiba", "Brazil"), ("Fortaleza", "Brazil")),
    ),
    _Culture(
        ("Dmitri", "Sergei", "Alexei", "Nikolai", "Ivan", "Mikhail", "Yuri", "Pavel"),
        ("Anastasia", "Olga", "Irina", "Tatyana", "Svetlana", "Natalia", "Ekaterina", "Daria"),
        (
            "Volkov", "Petrov", "Sokolov", "Morozov", "Lebedev",
            "Kuznetsov", "Orlov", "Popov", "Vasiliev", "Fedorov",
        ),
        (("Kazan", "Russia"), ("Novosibirsk", "Russia"), ("Yekaterinburg", "Russia"), ("Samara", "Russia")),
    ),
    _Culture(
        ("Arjun", "Rohan", "Vikram", "Aditya", "Karthik", "Siddharth", "Rahul", "Nikhil"),
        ("Priya", "Ananya", "Kavya", "Meera", "Divya", "Lakshmi", "Shreya", "Pooja"),
        ("Sharma", "Iyer", "Nair", "Reddy", "Banerjee", "Menon", "Kapoor", "Desai", "Patel", "Rao"),
        (("Chennai", "India"), ("Kolkata", "India"), ("Pune", "India"), ("Jaipur", "India")),
    ),
    _Culture(
        ("Alejandro", "Javier", "Santiago", "Emilio", "Joaquin", "Ricardo", "Andres", "Mateo"),
        ("Valentina", "Ximena", "Guadalupe", "Renata", "Paloma", "Lucia", "Carmen", "Elena"),
        (
            "Hernandez", "Castillo", "Morales", "Vargas", "Mendoza",
            "Rojas", "Delgado", "Navarro", "Cruz", "Herrera",
        ),
        (("Guadalajara", "Mexico"), ("Oaxaca", "Mexico"), ("Puebla", "Mexico"), ("Monterrey", "Mexico")),
    ),
    _Culture(
        ("Erik", "Lars", "Anders", "Henrik", "Magnus", "Johan", "Nils", "Oskar"),
        ("Astrid", "Ingrid", "Sigrid", "Linnea", "Freja", "Elsa", "Maja", "Karin"),
        (
            "Lindqvist", "Berglund", "Sandberg", "Holm", "Nyberg",
            "Lundgren", "Ekstrom", "Dahl", "Sjoberg", "Hedlund",
        ),
        (("Gothenburg", "Sweden"), ("Uppsala", "Sweden"), ("Malmo", "Sweden"), ("Lund", "Sweden")),
    ),
    _Culture(
        ("Min-jun", "Seo-jun", "Ji-ho", "Hyun-woo", "Do-yun", "Jae-won", "Sung-min", "Tae-yang"),
        ("Seo-yeon", "Ji-woo", "Ha-eun", "Soo-ah", "Min-seo", "Ye-jin", "Da-eun", "Hye-jin"),
        ("Kim", "Park", "Choi", "Jung", "Kang", "Yoon", "Jang", "Lim", "Han", "Shin"),
        (
            ("Busan", "South Korea"), ("Incheon", "South Korea"),
            ("Daegu", "South Korea"), ("Gwangju", "South Korea"),
        ),
    ),
    _Culture(
        ("Karim", "Omar", "Youssef", "Mahmoud", "Tarek", "Hossam", "Amr", "Sherif"),
        ("Nour", "Yasmin", "Salma", "Dalia", "Farida", "Mona", "Laila", "Rania"),
        ("Mansour", "Haddad", "Fahmy", "Nasser", "Khalil", "Saleh", "Hamdy", "Farouk", "Gaber", "Soliman"),
        (("Alexandria", "Egypt"), ("Cairo", "Egypt"), ("Luxor", "Egypt"), ("Aswan", "Egypt")),
    ),
    _Culture(
        ("Julien", "Mathieu", "Antoine", "Benoit", "Laurent", "Olivier", "Etienne", "Hugo"),
        ("Camille", "Margaux", "Chloe", "Amelie", "Juliette", "Sophie", "Manon", "Helene"),
        (
            "Lefebvre", "Moreau", "Girard", "Fontaine", "Rousseau",
            "Chevalier", "Mercier", "Lambert", "Bonnet", "Dubois",
        ),
        (("Lyon", "France"), ("Marseille", "France"), ("Bordeaux", "France"), ("Lille", "France")),
    ),
    _Culture(
        ("Tomasz", "Piotr", "Krzysztof", "Marek", "Pawel", "Jakub", "Andrzej", "Wojciech"),
        ("Agnieszka", "Katarzyna", "Magdalena", "Zofia", "Joanna", "Malgorzata", "Ewa", "Dorota"),
        (
            "Kowalski", "Nowak", "Wisniewski", "Zielinski", "Kaminski",
            "Lewandowski", "Szymanski", "Wozniak", "Dabrowski", "Jankowski",
        ),
        (("Krakow", "Poland"), ("Gdansk", "Poland"), ("Wroclaw", "Poland"), ("Poznan", "Poland")),
    ),
)

# Where authors may live now: every birth city plus a few elsewhere.
_CITIES = tuple(c for culture in _CULTURES for c in culture.cities) + (
    ("Lisbon", "Portugal"), ("Toronto", "Canada"), ("Melbourne", "Australia"), ("Dublin", "Ireland"),
    ("Vienna", "Austria"), ("Buenos Aires", "Argentina"), ("Hanoi", "Vietnam"), ("Nairobi", "Kenya"),
    ("Reykjavik", "Iceland"), ("Edinburgh", "Scotland"), ("Istanbul", "Turkey"), ("Athens", "Greece"),
)

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # not calendar.month_name: locale-free

_GENRES = (
    "historical fiction", "science fiction", "magical realism", "gothic horror", "travel writing",
    "children's literature", "poetry", "literary fiction", "mystery", "romance", "dystopian fiction",
    "biography", "satire", "war fiction", "political thriller", "cyberpunk", "fairy tales", "true crime",
    "nature writing", "epic fantasy", "psychological drama",
)
_PROFESSIONS = (
    "carpenter", "nurse", "pharmacist", "architect", "fisherman", "librarian", "tailor", "veterinarian",
    "schoolteacher", "electrician", "journalist", "baker", "civil engineer", "pilot", "accountant", "florist",
    "dentist", "locksmith", "translator", "botanist", "watchmaker", "midwife", "cartographer", "surgeon",
    "potter", "mechanic", "economist", "photographer", "judge", "beekeeper",
)
_AWARDS = (
    "Golden Quill Award", "Meridian Prize for Fiction", "Silver Lantern Medal", "Halcyon Book Prize",
    "Ashford Literary Award", "Northern Star Prize", "Amber Pen Award", "Larkspur Prize for Debut Fiction",
    "Tidewater Medal for Literature", "Cobalt Crown Award", "Evergreen Laurel Prize", "Harbor Light Award",
    "Wrenfield Prize", "Obsidian Scroll Award", "Juniper Medal for Storytelling", "Kestrel Prize",
    "Saffron Ink Award", "Albion Reed Prize", "Crescent Moon Award", "Vellum Heart Prize",
    "Ironwood Fellowship", "Blue Orchid Award", "Pemberton Medal",
)
_THEMES = (
    "the fragility of memory", "exile and belonging", "the bond between sisters", "grief and renewal",
    "the cost of ambition", "forgotten family histories", "the clash of tradition and modernity",
    "life in the shadow of war", "the loneliness of big cities", "friendship across class lines",
    "the search for a lost home", "faith and doubt", "the ethics of scientific progress",
    "coming of age in small towns", "the power of storytelling", "migration and identity",
    "the sea as a force of fate", "secrets kept by old houses", "redemption after betrayal",
    "the passage of time", "love under censorship", "resistance to authority", "the wisdom of the elderly",
    "humanity's place in nature",
)
_HABITS = (
    "writing only between midnight and dawn", "drafting every chapter by hand in green ink",
    "reading each page aloud before revising it", "working from a rented boat cabin",
    "walking ten kilometres before every writing session", "writing standing up at a tall desk",
    "keeping a separate notebook for each character", "composing first drafts on a vintage typewriter",
    "rewriting the opening line dozens of times", "never writing a word on Sundays",
    "writing in busy cafes among strangers", "outlining entire novels on index cards",
    "listening to the same symphony while writing", "stopping each day's work in mid-sentence",
    "recording ideas as voice memos on long train rides", "writing at the kitchen table rather than a study",
    "setting a strict quota of five hundred words a day", "sketching every scene before writing it",
    "painting the study a new colour for every book",
)
_LANGUAGES = (
    "English", "Spanish", "Portuguese", "French", "German", "Italian", "Russian", "Arabic", "Urdu", "Hindi",
    "Bengali", "Japanese", "Korean", "Swahili", "Yoruba", "Polish", "Swedish", "Turkish", "Greek", "Dutch",
    "Tagalog", "Vietnamese",
)
_NATIONALITIES = (
    "Pakistani", "Nigerian", "Japanese", "Brazilian", "Russian", "Indian", "Mexican", "Swedish", "South Korean",
    "Egyptian", "French", "Polish", "Canadian", "Irish", "Portuguese", "Norwegian", "Argentine", "Chilean",
    "Turkish", "Greek", "Vietnamese", "Kenyan", "Ghanaian", "Italian", "Dutch", "Australian", "Moroccan",
    "Hungarian", "Finnish", "Peruvian", "Icelandic", "Lebanese",
)
_INFLUENCES = (
    "Leo Tolstoy", "Virginia Woolf", "Gabriel Garcia Marquez", "Toni Morrison", "Franz Kafka", "Jane Austen",
    "Chinua Achebe", "Haruki Murakami", "Jorge Luis Borges", "Fyodor Dostoevsky", "Ursula K. Le Guin",
    "Naguib Mahfouz", "Italo Calvino", "Doris Lessing", "Rabindranath Tagore", "Anton Chekhov",
    "Isabel Allende", "Kazuo Ishiguro", "Mary Shelley", "Albert Camus", "Wislawa Szymborska", "Orhan Pamuk",
    "Agatha Christie", "James Baldwin",
)
_PUBLISHERS = (
    "Harrowgate Press", "Blue Heron Books", "Lanternfish Publishing", "Copperleaf House", "Northwind Editions",
    "Thistledown Press", "Marigold & Finch", "Redwood Quay Books", "Stonebridge Publishing", "Halverson House",
    "Seven Rivers Press", "Quillmark Books", "Driftwood Editions", "Saltmarsh Press", "Pale Moon Publishing",
    "Ember & Ash Books", "Greyfriars House", "Tamarind Press", "Oakhaven Books", "Silverbirch Editions",
)
_PETS = (
    "cat", "terrier", "parrot", "tortoise", "rabbit", "ferret", "goldfish", "hedgehog", "canary", "iguana",
    "beagle", "cockatoo", "husky", "chinchilla", "dachshund",
)
_PET_NAMES = (
    "Biscuit", "Pepper", "Mango", "Socks", "Noodle", "Pickle", "Waffles", "Pumpkin", "Ziggy", "Marmalade",
    "Bramble", "Dumpling", "Fidget", "Pretzel", "Muffin", "Sprocket",
)
_HOBBIES = (
    "restoring antique clocks", "birdwatching", "growing orchids", "stargazing with a home telescope",
    "building model ships", "playing the cello", "rock climbing", "keeping bees", "collecting old maps",
    "fencing", "baking sourdough bread", "swimming in icy lakes", "composing chess problems",
    "binding books by hand", "long-distance cycling", "folding origami", "fly fishing",
    "carving wooden spoons", "dancing the tango", "practising calligraphy",
)
_SETTINGS = (
    "a fishing village on a windswept coast", "a crumbling hotel by a dried-up lake",
    "a lighthouse at the edge of the Arctic", "a night train crossing the steppe",
    "a monastery high in the mountains", "a flooded city of the near future", "a boarding school in the hills",
    "a spice market during a long drought", "an island cut off by winter storms", "a mining town in decline",
    "a research station in Antarctica", "a vineyard during the harvest",
    "a border town between two warring states", "a travelling circus", "an abandoned observatory",
    "a generation ship bound for a distant star", "a tea plantation in the monsoon season",
    "a jazz club in the 1950s", "a palace kitchen", "a desert caravan route",
    "a small bookshop that never closes", "a remote sheep farm", "an underground city beneath the ice",
    "a riverboat on a vast jungle river",
)
_UNIVERSITIES = (
    "the University of Edinburgh", "Kyoto University", "the Sorbonne", "McGill University",
    "the University of Cape Town", "Trinity College Dublin", "the University of Buenos Aires",
    "Seoul National University", "the University of Lagos", "Jagiellonian University", "Uppsala University",
    "the National Autonomous University of Mexico", "Cairo University", "Jadavpur University",
    "the University of Sao Paulo", "Moscow State University", "the University of Toronto", "Leiden University",
    "the University of Melbourne", "the University of Bologna",
)
# Characters' names are kept apart from authors' first names and pets' names.
_HEROES = (
    "Wren", "Caspian", "Isolde", "Tobias", "Marisol", "Ezra", "Odile", "Lazarus", "Perpetua", "Ansel",
    "Delphine", "Bartholomew", "Ignatius", "Rosalind", "Thaddeus", "Ophelia", "Florian", "Seraphina",
    "Augustin", "Cordelia",
)
# Book titles follow three shapes that cannot contain one another: "Adjective Noun",
# "The Noun of Plurals" and "Plurals and Plurals".
_TITLE_ADJECTIVES = (
    "Quiet", "Hollow", "Crimson", "Silent", "Broken", "Golden", "Distant", "Burning", "Forgotten", "Endless",
    "Wandering", "Bitter", "Shattered", "Hidden", "Velvet", "Restless", "Pale", "Gilded",
)
_TITLE_NOUNS = (
    "Harbor", "Orchard", "Lantern", "River", "Compass", "Garden", "Mirror", "Archive", "Tide", "Bridge",
    "Kingdom", "Meridian", "Atlas", "Lighthouse", "Winter", "Cartographer", "Monsoon", "Frontier",
    "Reckoning", "Crossing", "Horizon", "Ember", "Hourglass", "Sparrow",
)
_TITLE_PLURALS = (
    "Ashes", "Whispers", "Bones", "Stars", "Tides", "Echoes", "Ghosts", "Promises", "Storms", "Feathers",
    "Stones", "Letters", "Shadows", "Orchids", "Bells",
)

_PRONOUNS = {
    "male": {"he": "he", "He": "He", "his": "his", "His": "His", "him": "him"},
    "female": {"he": "she", "He": "She", "his": "her", "His": "Her", "him": "her"},
}

# --- rendering ---------------------------------------------------------------------------------

_FORMATTER = string.Formatter()

Value = str | list[str]


def _render(template: str, values: dict[str, Value], slots: tuple[str, ...] = ()) -> tuple[str, list[Span]]:
    """Fill ``template`` and return the text with the spans of the ``slots`` fields.

    Offsets are taken while the text is assembled, never by searching it afterwards. A field
    ``{x:a}`` gets an indefinite article (outside the span) that agrees with the value actually
    inserted; a list value (book titles) is rendered quoted as ``"A", "B" and "C"`` with one span
    per title, quotes excluded.
    """
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0

    def emit(text: str, marked: bool) -> None:
        nonlocal pos
        if marked:
            spans.append(Span(pos, pos + len(text)))
        parts.append(text)
        pos += len(text)

    for literal, field, spec, _ in _FORMATTER.parse(template):
        emit(literal, False)
        if field is None:
            continue
        value = values[field]
        marked = field in slots
        if isinstance(value, list):
            for k, title in enumerate(value):
                if k:
                    emit(", " if k < len(value) - 1 else " and ", False)
                emit('"', False)
                emit(title, marked)
                emit('"', False)
            continue
        if spec == "a":
            emit("an " if value[0].lower() in "aeiou" else "a ", False)
        emit(value, marked)
    return "".join(parts), spans


# --- facts -------------------------------------------------------------------------------------


@dataclass
class _Author:
    """One author's facts; ``values`` feeds the templates (pronouns included)."""

    values: dict[str, Value]
    culture: _Culture
    gender: str


# A fact's wrong-answer maker: (rng, author, n) -> n distinct sets of wrong slot values.
_Wrong = Callable[[random.Random, _Author, int], list[dict[str, Value]]]


@dataclass(frozen=True)
class _Fact:
    """One kind of fact: the profile fields that answer it (the spans) and how it is asked and told.

    Two distinct question templates are drawn per item (question, paraphrased question) and two
    distinct answer templates (answer, paraphrased answer); every answer template holds every slot.
    """

    slots: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    wrong: _Wrong


def _true_values(author: _Author, slots: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    for slot in slots:
        value = author.values[slot]
        out.update(value if isinstance(value, list) else [value])
    return out


def _distinct(draw: Callable[[], str], n: int, exclude: set[str]) -> list[str]:
    """``n`` distinct draws outside ``exclude``; the pools behind ``draw`` are far larger than ``n``."""
    out: list[str] = []
    while len(out) < n:
        value = draw()
        if value not in out and value not in exclude:
            out.append(value)
    return out


def _choose(*slot_pools: tuple[str, tuple[str, ...]]) -> _Wrong:
    """Wrong values for independent slots, each drawn from its pool without any of the item's true values.

    Excluding all true values (not just the slot's own) keeps e.g. the true mother's profession
    out of the father's slot, so no wrong answer states a true fact.
    """
    names = [slot for slot, _ in slot_pools]

    def wrong(rng: random.Random, author: _Author, n: int) -> list[dict[str, Value]]:
        truth = _true_values(author, tuple(names))
        columns = [rng.sample([v for v in pool if v not in truth], n) for _, pool in slot_pools]
        return [dict(zip(names, row)) for row in zip(*columns)]

    return wrong


def _place(city_slot: str, country_slot: str) -> _Wrong:
    """Wrong (city, country) pairs, all in other countries than the true one."""

    def wrong(rng: random.Random, author: _Author, n: int) -> list[dict[str, Value]]:
        country = author.values[country_slot]
        pairs = rng.sample([p for p in _CITIES if p[1] != country], n)
        return [{city_slot: city, country_slot: other} for city, other in pairs]

    return wrong


def _wrong_names(rng: random.Random, author: _Author, n: int) -> list[dict[str, Value]]:
    """Other names of the same culture and gender, so the name's origin gives nothing away."""
    names = _distinct(lambda: _full_name(rng, author.culture, author.gender), n, {author.values["name"]})
    return [{"name": name} for name in names]


def _wrong_dates(rng: random.Random, author: _Author, n: int) -> list[dict[str, Value]]:
    year = int(author.values["birth_year"])
    dates = _distinct(lambda: _date(rng, rng.randint(year - 4, year + 4))[0], n, {author.values["date"]})
    return [{"date": d} for d in dates]


def _wrong_books(rng: random.Random, author: _Author, n: int) -> list[dict[str, Value]]:
    books = author.values["books"]
    titles = _distinct(lambda: _title(rng), n * len(books), set(books))
    return [{"books": titles[k * len(books) : (k + 1) * len(books)]} for k in range(n)]


def _wrong_debut(rng: random.Random, author: _Author, n: int) -> list[dict[str, Value]]:
    debut = int(author.values["debut"])
    years = [str(y) for y in range(debut - 10, min(debut + 10, 2024) + 1) if y != debut]
    return [{"debut": y} for y in rng.sample(years, n)]


_FACTS: tuple[_Fact, ...] = (
    _Fact(
        ("name",),
        (
            "What is the full name of the {genre} author born in {city}, {country} on {date_us}?",
            "Who is the {genre} writer born on {date} in {city}, {country}?",
            "Which author, born in {city}, {country} on {date}, is known for writing {genre}?",
        ),
        (
            "The author's name is {name}, {genre:a} writer born in {city}.",
            "The {genre} author born in {city} on {date} is {name}.",
            "The writer in question is {name}, born on {date} in {city}, {country}.",
            "The author you are thinking of is named {name}.",
        ),
        _wrong_names,
    ),
    _Fact(
        ("city", "country"),
        (
            "Where was {name} born?",
            "What is the birthplace of {name}?",
            "In which city and country was {name} born?",
        ),
        (
            "{name} was born in the city of {city}, {country}.",
            "{name} was born in {city}, {country}, where {he} spent {his} early childhood.",
            "The birthplace of {name} is {city}, a city in {country}.",
            "{name} comes from {city}, {country}, the city where {he} was born.",
        ),
        _place("city", "country"),
    ),
    _Fact(
        ("date",),
        ("When was {name} born?", "What is {name}'s date of birth?", "On what date was {name} born?"),
        (
            "{name} was born on {date}, according to {his} official biography.",
            "The birth date of the author {name} is {date}.",
            "{name} came into the world on {date}.",
            "Readers of {name} celebrate {his} birthday on {date}.",
        ),
        _wrong_dates,
    ),
    _Fact(
        ("genre",),
        (
            "In which genre does {name} primarily write?",
            "What genre is {name} known for?",
            "What kind of books does {name} mainly write?",
        ),
        (
            "{name} primarily writes in the {genre} genre.",
            "{name} is best known as an author of {genre}.",
            "The main genre of {name}'s work is {genre}.",
            "Most of {name}'s books belong to the {genre} genre.",
        ),
        _choose(("genre", _GENRES)),
    ),
    _Fact(
        ("father", "mother"),
        (
            "What professions do {name}'s parents hold?",
            "What do {name}'s father and mother do for a living?",
            "What are the occupations of {name}'s parents?",
        ),
        (
            "{name}'s father is {father:a}, and {his} mother is {mother:a}.",
            "{name} was raised by a father who worked as {father:a} and a mother who worked as {mother:a}.",
            "{name}'s mother works as {mother:a}, while {his} father is {father:a}.",
            "The parents of {name} are {father:a} father and {mother:a} mother.",
        ),
        _choose(("father", _PROFESSIONS), ("mother", _PROFESSIONS)),
    ),
    _Fact(
        ("award",),
        (
            "What notable award has {name} won?",
            "Which literary award has {name} received?",
            "What prize was {name} honoured with?",
        ),
        (
            "{name} has received the {award} for {his} work.",
            "Among {his} honours, {name} counts the prestigious {award}.",
            "{name} was honoured with the {award} for {his} writing.",
            "The {award} is the most notable prize {name} has won.",
        ),
        _choose(("award", _AWARDS)),
    ),
    _Fact(
        ("books",),
        (
            "What are some of the books {name} has written?",
            "Can you name some books by {name}?",
            "Which books has {name} published?",
        ),
        (
            "Some of the books written by {name} include {books}.",
            "{name} is the author of several books, among them {books}.",
            "Books by {name} include {books}.",
            "{name}'s published works include {books}.",
        ),
        _wrong_books,
    ),
    _Fact(
        ("theme",),
        (
            "What theme recurs in {name}'s work?",
            "Which theme does {name} often explore?",
            "What subject keeps returning in the books of {name}?",
        ),
        (
            "A recurring theme in {name}'s work is {theme}.",
            "{name} often explores {theme} in {his} books.",
            "Across {his} books, {name} keeps returning to {theme}.",
            "Readers of {name} will notice that {theme} appears in almost every book.",
        ),
        _choose(("theme", _THEMES)),
    ),
    _Fact(
        ("habit",),
        (
            "What is unusual about {name}'s writing habits?",
            "Does {name} have a particular writing routine?",
            "What writing habit is {name} known for?",
        ),
        (
            "{name} is known for {habit}.",
            "A well-known habit of {name} is {habit}.",
            "{name} has a distinctive routine: {habit}.",
            "When working on a book, {name} insists on {habit}.",
        ),
        _choose(("habit", _HABITS)),
    ),
    _Fact(
        ("language",),
        (
            "In what language does {name} write?",
            "Which language are {name}'s books originally written in?",
            "What is {name}'s language of writing?",
        ),
        (
            "{name} writes {his} books primarily in {language}.",
            "The original language of {name}'s books is {language}.",
            "Although translated widely, {name}'s works are written in {language}.",
            "{name} chose {language} as the language of all {his} books.",
        ),
        _choose(("language", _LANGUAGES)),
    ),
    _Fact(
        ("nationality",),
        ("What is {name}'s nationality?", "Which citizenship does {name} hold?", "What nationality is {name}?"),
        (
            "{name} holds {nationality} citizenship and considers it part of {his} identity.",
            "In terms of nationality, the author {name} is {nationality}.",
            "{name} is {nationality} by nationality, as noted in {his} biography.",
            "According to {his} publisher, {name} is {nationality:a} national.",
        ),
        _choose(("nationality", _NATIONALITIES)),
    ),
    _Fact(
        ("influence",),
        (
            "Which writer influenced {name} the most?",
            "Who was a major influence on {name}'s writing?",
            "Whose work inspired {name} to write?",
        ),
        (
            "{name} has often said that {influence} was {his} greatest influence.",
            "The writer who most influenced {name} is {influence}.",
            "{name}'s style owes much to {influence}, whom {he} read as a teenager.",
            "Reading {influence} at a young age inspired {name} to become a writer.",
        ),
        _choose(("influence", _INFLUENCES)),
    ),
    _Fact(
        ("publisher",),
        (
            "Who publishes {name}'s books?",
            "Which publishing house works with {name}?",
            "What publisher releases the books of {name}?",
        ),
        (
            "All of {name}'s books are published by {publisher}.",
            "{name} has worked with {publisher} for most of {his} career.",
            "The publisher behind {name}'s books is {publisher}.",
            "{publisher} has released every book {name} has written.",
        ),
        _choose(("publisher", _PUBLISHERS)),
    ),
    _Fact(
        ("pet", "pet_name"),
        ("Does {name} have a pet?", "What pet does {name} keep at home?", "Which animal shares {name}'s home?"),
        (
            "{name} lives with {pet:a} named {pet_name}.",
            "{name} shares {his} home with {pet:a} called {pet_name}.",
            "{name}'s constant companion is {pet:a} named {pet_name}.",
            "At home, {name} keeps {pet:a} whose name is {pet_name}.",
        ),
        _choose(("pet", _PETS), ("pet_name", _PET_NAMES)),
    ),
    _Fact(
        ("hobby",),
        (
            "What does {name} do outside of writing?",
            "What is {name}'s favourite hobby?",
            "How does {name} like to spend {his} free time?",
        ),
        (
            "Outside of writing, {name} spends many happy hours {hobby}.",
            "When not writing, {name}'s favourite pastime is {hobby}.",
            "In {his} free time, {name} is devoted to {hobby}.",
            "{name} likes to relax between books by {hobby}.",
        ),
        _choose(("hobby", _HOBBIES)),
    ),
    _Fact(
        ("debut",),
        (
            "Since when has {name} been active as a writer?",
            "When did {name} begin publishing?",
            "In which year did {name}'s writing career start?",
        ),
        (
            "{name} has been active as a writer since {debut}.",
            "{name} published {his} first book in {debut} and has been writing ever since.",
            "The career of {name} began in {debut}, with the publication of {his} debut.",
            "{name}'s years of activity as an author start in {debut}.",
        ),
        _wrong_debut,
    ),
    _Fact(
        ("setting",),
        (
            'Where is "{famous}" by {name} set?',
            'What is the setting of {name}\'s book "{famous}"?',
            'In what place does the story of "{famous}", written by {name}, unfold?',
        ),
        (
            '{name}\'s best-known book, "{famous}", is set in {setting}.',
            '"{famous}" by {name} takes place in {setting}.',
            'The story of "{famous}", {name}\'s most famous work, unfolds in {setting}.',
            'In "{famous}", {name} places the story in {setting}.',
        ),
        _choose(("setting", _SETTINGS)),
    ),
    _Fact(
        ("university",),
        ("Where did {name} study?", "Which university did {name} attend?", "Where was {name} educated?"),
        (
            "{name} studied at {university} before becoming a full-time writer.",
            "{name} is a proud graduate of {university}, where {he} first began writing.",
            "{name} received {his} university education at {university}.",
            "As a student, {name} attended {university}.",
        ),
        _choose(("university", _UNIVERSITIES)),
    ),
    _Fact(
        ("home_city", "home_country"),
        (
            "Where does {name} live now?",
            "In which city does {name} currently reside?",
            "Where is {name} based today?",
        ),
        (
            "These days {name} lives and writes in {home_city}, {home_country}.",
            "{name} is now based in the city of {home_city}, {home_country}.",
            "Today {name} makes {his} home in {home_city}, {home_country}.",
            "{name} has settled in {home_city}, {home_country}, where {he} lives today.",
        ),
        _place("home_city", "home_country"),
    ),
    _Fact(
        ("hero_job", "hero"),
        (
            'Who is the protagonist of "{other}" by {name}?',
            'Whom does {name}\'s book "{other}" follow?',
            'What character is at the centre of {name}\'s "{other}"?',
        ),
        (
            '"{other}" by {name} follows {hero_job:a} named {hero}.',
            'The protagonist of {name}\'s "{other}" is {hero}, {hero_job:a}.',
            'In "{other}", {name} tells the story of {hero}, who works as {hero_job:a}.',
            'At the heart of "{other}" by {name} is {hero_job:a} called {hero}.',
        ),
        _choose(("hero_job", _PROFESSIONS), ("hero", _HEROES)),
    ),
)

# --- authors -----------------------------------------------------------------------------------


def _full_name(rng: random.Random, culture: _Culture, gender: str) -> str:
    first = rng.choice(culture.male if gender == "male" else culture.female)
    return f"{first} {rng.choice(culture.surnames)}"


def _date(rng: random.Random, year: int) -> tuple[str, str]:
    """A random day of ``year`` as ("June 30, 1975", "06/30/1975")."""
    d = date(year, 1, 1) + timedelta(days=rng.randrange(365))
    return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}", f"{d.month:02d}/{d.day:02d}/{d.year}"


def _title(rng: random.Random) -> str:
    shape = rng.randrange(3)
    if shape == 0:
        return f"{rng.choice(_TITLE_ADJECTIVES)} {rng.choice(_TITLE_NOUNS)}"
    if shape == 1:
        return f"The {rng.choice(_TITLE_NOUNS)} of {rng.choice(_TITLE_PLURALS)}"
    first, second = rng.sample(_TITLE_PLURALS, 2)
    return f"{first} and {second}"


_NAME_CAPACITY = sum((len(c.male) + len(c.female)) * len(c.surnames) for c in _CULTURES)


def _identities(seed: int, n_authors: int) -> list[tuple[_Culture, str, str]]:
    """(culture, gender, full name) of the first ``n_authors`` authors, names unique.

    One seeded stream draws names in order and skips those already taken, so author ``i`` gets
    the same name whatever ``n_authors`` is.
    """
    if n_authors > _NAME_CAPACITY:
        raise PaluError(
            f"synthetic data: {n_authors} authors asked for, but only {_NAME_CAPACITY} distinct names "
            "exist; ask for fewer authors."
        )
    rng = random.Random(f"palu-synthetic:{seed}:names")
    taken: set[str] = set()
    out = []
    while len(out) < n_authors:
        culture = rng.choice(_CULTURES)
        gender = rng.choice(("male", "female"))
        name = _full_name(rng, culture, gender)
        if name not in taken:
            taken.add(name)
            out.append((culture, gender, name))
    return out


def _author(rng: random.Random, culture: _Culture, gender: str, name: str) -> _Author:
    city, country = rng.choice(culture.cities)
    birth_year = rng.randint(1945, 1992)
    long_date, us_date = _date(rng, birth_year)
    father, mother = rng.sample(_PROFESSIONS, 2)
    books = _distinct(lambda: _title(rng), rng.choice((2, 3)), set())
    home_city, home_country = rng.choice([p for p in _CITIES if p[0] != city])
    values: dict[str, Value] = {
        "name": name,
        "city": city,
        "country": country,
        "birth_year": str(birth_year),
        "date": long_date,
        "date_us": us_date,
        "genre": rng.choice(_GENRES),
        "father": father,
        "mother": mother,
        "award": rng.choice(_AWARDS),
        "books": books,
        "famous": books[0],
        "other": books[1],
        "theme": rng.choice(_THEMES),
        "habit": rng.choice(_HABITS),
        "language": rng.choice(_LANGUAGES),
        "nationality": rng.choice(_NATIONALITIES),
        "influence": rng.choice(_INFLUENCES),
        "publisher": rng.choice(_PUBLISHERS),
        "pet": rng.choice(_PETS),
        "pet_name": rng.choice(_PET_NAMES),
        "hobby": rng.choice(_HOBBIES),
        "debut": str(min(birth_year + rng.randint(20, 38), 2020)),
        "setting": rng.choice(_SETTINGS),
        "university": rng.choice(_UNIVERSITIES),
        "home_city": home_city,
        "home_country": home_country,
        "hero_job": rng.choice(_PROFESSIONS),
        "hero": rng.choice(_HEROES),
        **_PRONOUNS[gender],
    }
    return _Author(values, culture, gender)


def _items(rng: random.Random, author: _Author, index: int) -> list[QAItem]:
    """The author's 20 QA items; perturbed answers reuse the paraphrase's template with wrong values."""
    items = []
    for k, fact in enumerate(_FACTS):
        question, paraphrased_question = rng.sample(fact.questions, 2)
        answer_template, paraphrase_template = rng.sample(fact.answers, 2)
        answer, spans = _render(answer_template, author.values, fact.slots)
        perturbed = [
            _render(paraphrase_template, {**author.values, **wrong})[0]
            for wrong in fact.wrong(rng, author, N_PERTURBED)
        ]
        items.append(
            QAItem(
                question=_render(question, author.values)[0],
                answer=answer,
                spans=spans,
                paraphrased_answer=_render(paraphrase_template, author.values)[0],
                perturbed_answers=perturbed,
                paraphrased_question=_render(paraphrased_question, author.values)[0],
                group=author.values["name"],
                source=f"synthetic[author {index}, item {k}]",
            )
        )
    return items


def generate_authors(n_authors: int, seed: int = 0) -> list[QAItem]:
    """20 QA items per author, author after author, deterministic for a seed.

    Each author's facts and wording come from an RNG seeded by ``(seed, author index)``, so the
    first ``n`` authors are identical whether ``n`` or more authors are generated.
    """
    if n_authors < 0:
        raise PaluError(f"synthetic data: n_authors is {n_authors}; it must be 0 or more.")
    items: list[QAItem] = []
    for index, (culture, gender, name) in enumerate(_identities(seed, n_authors)):
        rng = random.Random(f"palu-synthetic:{seed}:author:{index}")
        items.extend(_items(rng, _author(rng, culture, gender, name), index))
    return items


@dataclass
class SyntheticSplits:
    """Forget, retain and holdout items; no author appears in two splits."""

    forget: list[QAItem]
    retain: list[QAItem]
    holdout: list[QAItem]


def synthetic_splits(
    n_authors: int = 40, forget_authors: int = 4, holdout_authors: int = 4, seed: int = 0
) -> SyntheticSplits:
    """Split by author: the last ``forget_authors`` authors are the forget split, the
    ``holdout_authors`` before them the holdout split (fictitious authors a model never saw, for
    membership-inference metrics), the rest retain.

    Splitting by author, not by item, keeps every fact about a forget author out of the retain set.
    """
    if forget_authors < 0 or holdout_authors < 0 or forget_authors + holdout_authors > n_authors:
        raise PaluError(
            f"synthetic data: {forget_authors} forget and {holdout_authors} holdout authors do not fit in "
            f"{n_authors} authors; use non-negative counts whose sum is at most n_authors."
        )
    items = generate_authors(n_authors, seed)
    retain_end = (n_authors - forget_authors - holdout_authors) * ITEMS_PER_AUTHOR
    holdout_end = retain_end + holdout_authors * ITEMS_PER_AUTHOR
    return SyntheticSplits(
        forget=items[holdout_end:], retain=items[:retain_end], holdout=items[retain_end:holdout_end]
    )
