"""Seed material for synthetic training prompts, written for this project in its own words.

A generation request combines a category, a question form (which says whether the question invites a
multi-part answer), a topic, an asker and a tone; the teacher turns that into one user message. Topic pools
are shared between categories where the subject fits (a general pool of everyday subjects, a science pool, a
humanities pool) and are specific where it does not (coding tasks, math situations, puzzles, roles, texts).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Form:
    """A shape of user message: `text` is shown to the teacher; `multipart` says the answer has several parts."""

    text: str
    multipart: bool


@dataclass(frozen=True)
class Category:
    name: str
    label: str  # how the category is named to the teacher
    pools: tuple[str, ...]  # topic pools (keys of TOPICS) to draw from
    forms: tuple[Form, ...]
    setting: str | None = None  # a second pool giving each topic an everyday setting (small pools repeat less)


@dataclass(frozen=True)
class Example:
    """A worked few-shot example: the request fields and the message a good teacher writes for them."""

    category: str
    form: str
    topic: str
    asker: str
    tone: str
    message: str


def _m(text: str) -> Form:
    return Form(text, True)


def _s(text: str) -> Form:
    return Form(text, False)


# ------------------------------------------------------------------------------------------------ topics

_GENERAL = {
    "everyday life": [
        "keeping a small apartment tidy", "morning routines", "grocery shopping on a budget", "doing laundry",
        "decluttering a closet", "getting better sleep", "dealing with noisy neighbours", "planning a birthday party",
        "moving to a new city", "commuting by bike", "hosting guests for a weekend", "reducing screen time",
        "organizing paperwork at home", "choosing a mattress", "buying a used car", "getting rid of clutter",
        "meal prepping for the week", "saving water at home", "caring for houseplants", "packing for a move",
    ],
    "home and garden": [
        "growing tomatoes on a balcony", "composting kitchen scraps", "painting a room", "fixing a leaky tap",
        "insulating an old house", "choosing indoor lighting", "starting a vegetable garden", "keeping pests out of a garden",
        "building a raised garden bed", "cleaning mould in a bathroom", "hanging shelves on drywall",
        "choosing a lawn mower", "planting trees in a small yard", "lowering heating bills", "rainwater collection",
    ],
    "food and cooking": [
        "baking sourdough bread", "cooking rice perfectly", "vegetarian dinners", "making soup stock",
        "knife skills", "spices in Indian cooking", "fermenting vegetables", "packed lunches for kids",
        "cooking for one person", "replacing eggs in baking", "grilling fish", "homemade pasta",
        "storing leftovers safely", "coffee brewing methods", "making a cake without an oven",
        "cooking with cast iron", "quick breakfasts", "using up leftover bread", "food for a picnic",
        "reducing food waste",
    ],
    "health and fitness": [
        "starting to run", "stretching after exercise", "strength training at home", "drinking enough water",
        "healthy snacks", "back pain from sitting", "recovering from a cold", "building a workout habit",
        "swimming technique", "walking 10,000 steps", "yoga for beginners", "eating less sugar",
        "preparing for a 10k race", "managing stress at work", "posture at a desk", "sleep and exercise",
        "protein for muscle gain", "warming up before sport", "cycling long distances", "staying active while travelling",
    ],
    "money and personal finance": [
        "making a monthly budget", "building an emergency fund", "paying off credit card debt", "index funds",
        "saving for a house deposit", "choosing a bank account", "retirement savings", "splitting bills with roommates",
        "negotiating a salary", "understanding credit scores", "renting versus buying a home", "saving on groceries",
        "side incomes", "insurance for a car", "teaching children about money", "tracking expenses",
        "saving for a holiday", "student loans", "inflation and savings", "buying second-hand",
    ],
    "work and career": [
        "preparing for a job interview", "writing a CV", "asking for a raise", "working from home",
        "running a team meeting", "giving feedback to a colleague", "changing careers at forty", "freelancing",
        "time management at work", "dealing with a difficult manager", "public speaking", "starting a small business",
        "networking events", "writing a cover letter", "onboarding a new employee", "avoiding burnout",
        "remote team communication", "learning new skills for a promotion", "presenting data to managers",
        "setting goals for the year",
    ],
    "education and learning": [
        "learning a new language", "studying for exams", "taking notes in lectures", "learning to play guitar",
        "online courses", "helping a child with homework", "memorizing vocabulary", "writing an essay",
        "reading more books", "learning to code as an adult", "choosing a university subject", "group projects",
        "teaching a class for the first time", "learning to draw", "speed reading", "studying with flashcards",
    ],
    "relationships and family": [
        "making friends in a new town", "planning a wedding", "talking to teenagers", "long-distance friendships",
        "splitting chores with a partner", "visiting grandparents", "a child's first day at school",
        "setting boundaries with family", "choosing a gift for a friend", "apologizing after an argument",
        "raising twins", "family game nights", "new baby at home", "supporting a friend who lost a job",
    ],
    "travel": [
        "a weekend in Lisbon", "backpacking in Southeast Asia", "a road trip across Scotland", "travelling with a toddler",
        "packing light", "a first trip to Japan", "camping in national parks", "train travel in Europe",
        "avoiding jet lag", "travel insurance", "visiting Iceland in winter", "a budget trip to Mexico City",
        "a day in Istanbul", "hiking in the Alps", "travelling alone", "a cruise holiday", "a city break in Prague",
        "a safari in Kenya", "visiting New York on a budget", "exploring Morocco",
    ],
    "technology for everyone": [
        "choosing a laptop", "setting up home Wi-Fi", "backing up photos", "password managers",
        "smartphone battery life", "buying a smart TV", "protecting children online", "spotting phishing emails",
        "cloud storage", "two-factor authentication", "a slow computer", "choosing headphones",
        "smart home devices", "e-readers", "printing from a phone", "video calls with family",
    ],
    "nature and environment": [
        "recycling plastics", "urban wildlife", "bird watching", "climate change and farming", "saving bees",
        "electric cars", "solar panels on a house", "ocean plastic", "deforestation", "wildfires",
        "clean drinking water", "carbon footprints of food", "protecting wetlands", "endangered species",
    ],
    "hobbies and sports": [
        "learning chess", "knitting", "photography with a phone", "birdwatching gear", "starting a podcast",
        "rock climbing", "playing basketball", "tennis serves", "board games", "woodworking",
        "writing fiction as a hobby", "fishing", "collecting stamps", "skiing for beginners", "football tactics",
        "making pottery", "learning to dance salsa", "jigsaw puzzles", "astronomy with binoculars",
    ],
    "arts and culture": [
        "classical music for beginners", "going to the opera", "street art", "film noir", "jazz history",
        "museums for children", "reading poetry", "theatre etiquette", "graphic novels", "folk tales",
        "architecture of old cities", "learning to appreciate modern art", "film soundtracks", "book clubs",
    ],
    "society and civic life": [
        "volunteering locally", "voting for the first time", "public transport in cities", "working in a charity",
        "organizing a neighbourhood clean-up", "jury duty", "community gardens", "libraries in the digital age",
        "local elections", "renting rights for tenants", "accessibility in public buildings",
    ],
    "pets and animals": [
        "adopting a rescue dog", "training a puppy", "keeping cats indoors", "aquarium fish", "feeding rabbits",
        "pet insurance", "walking a dog in winter", "introducing a new cat to a home", "keeping chickens",
        "caring for an old dog", "horses",
    ],
}

_SCIENCE = [
    "photosynthesis", "black holes", "vaccines", "plate tectonics", "the water cycle", "DNA replication",
    "antibiotic resistance", "nuclear fusion", "the greenhouse effect", "electric circuits", "magnetism",
    "the speed of light", "sound waves", "chemical bonds", "acids and bases", "the immune system",
    "the human heart", "evolution by natural selection", "volcanoes", "earthquakes", "ocean tides",
    "the phases of the moon", "batteries", "semiconductors", "lasers", "weather fronts", "rainbows",
    "the periodic table", "enzymes", "cell division", "gravity", "friction", "renewable energy",
    "wind turbines", "hydrogen fuel", "the nitrogen cycle", "exoplanets", "the Big Bang", "entropy",
    "viruses and bacteria", "the nervous system", "sleep and the brain", "memory formation", "GPS satellites",
    "radio waves", "3D printing", "bridges and load", "aircraft lift", "rockets", "microplastics",
    "coral reefs", "glaciers", "soil erosion", "the carbon cycle", "machine learning", "encryption",
    "the internet's packet routing", "quantum tunnelling", "superconductors", "steel making", "concrete",
    "blood types", "digestion", "the eye and vision", "bird migration", "bioluminescence", "fermentation",
    "carbon dating", "ozone layer", "hurricanes", "dark matter",
]

_HUMANITIES = [
    "the fall of the Roman Empire", "the printing press", "the Industrial Revolution", "the French Revolution",
    "the Silk Road", "ancient Egypt's pyramids", "the Renaissance", "the Cold War", "the Ottoman Empire",
    "the Meiji Restoration", "the abolition of slavery", "the Black Death", "the Viking age", "the Aztec empire",
    "the invention of writing", "the history of coffee", "the American civil rights movement",
    "the space race", "the Great Depression", "the Magna Carta", "Stoicism", "utilitarianism",
    "Confucius", "Plato's cave", "free will", "the social contract", "existentialism", "Buddhist ethics",
    "Shakespeare's tragedies", "the Romantic poets", "magical realism", "dystopian novels", "Greek myths",
    "the epic of Gilgamesh", "impressionism", "Gothic architecture", "the Bauhaus", "Baroque music",
    "the blues", "hip-hop's origins", "how languages change", "dialects", "the origin of the alphabet",
    "world religions' festivals", "democracy in ancient Athens", "supply and demand", "inflation",
    "globalization", "propaganda", "urbanization", "the history of the Olympics", "medieval castles",
    "the Mughal empire", "the history of money", "maps and cartography", "the Enlightenment",
    "colonialism in Africa", "the partition of India", "the Berlin Wall", "women's suffrage",
    "the history of medicine", "ancient Chinese dynasties", "the Inca road system", "Japanese tea ceremony",
    "film history", "the novel as a form", "translation", "rhetoric",
]

_CODING = [
    "reverse a string", "check whether a number is prime", "read a CSV file and sum a column",
    "remove duplicates from a list while keeping order", "count word frequencies in a text file",
    "validate an email address", "merge two sorted lists", "find the second largest number", "binary search",
    "parse a date string", "flatten a nested list", "convert Celsius to Fahrenheit", "a simple to-do list app",
    "a REST endpoint that returns JSON", "rate limiting requests", "a linked list", "a stack and a queue",
    "depth-first search on a graph", "shortest path in a grid", "memoizing a slow function", "reading JSON config",
    "sending an email from a script", "resizing images in a folder", "renaming many files", "a command-line argument parser",
    "unit tests for a function", "a class for a bank account", "calculating the median", "matrix multiplication",
    "a web scraper for headlines", "retrying a failed HTTP request", "a palindrome check", "anagram groups",
    "an LRU cache", "a SQL query for the top customers", "joining two tables", "indexes in a database",
    "a regular expression for phone numbers", "handling exceptions", "logging in an application",
    "multithreading basics", "async file downloads", "a tic-tac-toe game", "a password generator",
    "sorting objects by a field", "a countdown timer", "FizzBuzz variations", "a dice rolling simulator",
    "a bash script that backs up a folder", "finding large files on disk", "git branching", "Docker for a small app",
    "a recursive Fibonacci function and its speed", "converting a list of dicts to a table", "a queue with two stacks",
    "detecting a cycle in a linked list", "debouncing a button click", "a React component for a form",
    "CSS centering", "pagination in an API", "environment variables for secrets", "a simple chat server",
    "reading a large file line by line", "string formatting", "a priority queue", "generating random test data",
    "computing a moving average", "a trie for autocomplete", "counting vowels", "Roman numerals",
]

_LANGUAGES = ["Python", "Python", "Python", "JavaScript", "TypeScript", "Java", "C++", "C", "Go", "Rust", "SQL",
              "Bash", "C#", "Ruby", "PHP", "Kotlin"]

_MATH = [
    "percentages and discounts", "compound interest", "simple interest on a loan", "fractions in a recipe",
    "ratio of paint colours", "average speed on a trip", "area of a garden", "volume of a water tank",
    "the Pythagorean theorem", "probability with two dice", "probability of drawing cards", "linear equations",
    "quadratic equations", "systems of two equations", "unit conversion for cooking", "time and distance",
    "mean, median and mode of test scores", "standard deviation", "arithmetic sequences", "geometric sequences",
    "combinations of pizza toppings", "permutations of a password", "circumference of a wheel", "angles in a triangle",
    "slope of a line", "exponents and powers", "logarithms", "prime factorization", "greatest common divisor",
    "least common multiple", "splitting a restaurant bill", "currency exchange", "fuel consumption",
    "work rates (two workers)", "mixing solutions of different strength", "population growth",
    "depreciation of a car", "tax on a salary", "scaling a map", "surface area of a box", "derivatives",
    "integrals of simple functions", "limits", "matrices", "vectors", "binary numbers", "modular arithmetic",
    "expected value of a game", "percentage increase and decrease", "ages of family members",
    "clock angles", "perimeter of a fence", "sale price after two discounts",
]

_REASONING = [
    "ordering people by height", "who sits where at a round table", "truth-tellers and liars",
    "finishing positions in a race", "family relationships", "days of the week puzzles", "weighing coins with a balance",
    "crossing a river with a boat", "scheduling meetings with constraints", "syllogisms", "spotting a logical fallacy",
    "cause versus correlation", "estimating a large quantity", "deducing a pattern in a number sequence",
    "assigning colours to houses", "a missing item among friends", "matching jobs to people", "counting handshakes",
    "boxes with wrong labels", "water jug measuring", "a lamp switch puzzle", "ages in the past and future",
    "which statement must be true", "the best route between errands", "splitting items fairly",
    "predicting the next shape in a pattern", "a detective's clues", "analogies", "odd one out",
    "rules of a made-up game", "a broken clock", "counting squares in a grid", "planning with limited time",
    "interpreting a survey result", "risk of a decision",
]

_ROLES = [
    "a patient language tutor", "a job interviewer for a software role", "a tour guide in ancient Rome",
    "a medieval innkeeper", "a personal trainer", "a ship's captain in a storm", "a customer support agent for an internet provider",
    "a detective questioning a witness", "a friendly librarian", "a sommelier", "a chef in a busy kitchen",
    "a museum curator", "a pirate telling stories", "a stand-up comedian", "a wise old wizard", "a travel agent",
    "a debate opponent", "a Socratic teacher", "a startup mentor", "a park ranger", "a radio DJ",
    "a science fiction spaceship computer", "a shopkeeper in a fantasy village", "a career coach",
    "an astronaut on the space station", "a famous inventor from the 1800s", "a gardener", "a fitness app's coach",
    "a landlord showing a flat", "a car salesperson", "a flight attendant", "a fortune teller at a fair",
    "a negotiator", "a sports commentator", "a helpful robot butler", "a nervous first-day employee",
    "a grumpy cat who can talk", "a time traveller from 2300", "a news anchor", "a chess coach",
]

_TEXTS = [
    "a job posting", "a product review of headphones", "notes from a team meeting", "an email about a delayed delivery",
    "a recipe", "a short news report about a local event", "a rental listing", "a flight confirmation",
    "a doctor's appointment reminder", "a restaurant review", "a company's quarterly update", "a hotel booking",
    "a biography paragraph about a scientist", "a customer complaint", "a school newsletter", "an event invitation",
    "a bank statement summary", "a weather report", "a product specification sheet", "a conference schedule",
    "a lost pet notice", "a short research abstract", "a car advertisement", "a museum opening hours notice",
    "a train timetable change", "a gym membership contract clause", "a letter from a landlord", "an online order receipt",
    "a movie synopsis", "a football match report", "a volunteer sign-up form", "a software release note",
    "a university course description", "a warranty card", "a travel blog paragraph", "a support ticket",
]

TOPICS: dict[str, list[str]] = {
    "general": [t for ts in _GENERAL.values() for t in ts],
    "science": _SCIENCE,
    "humanities": _HUMANITIES,
    "coding": _CODING,
    "math": _MATH,
    "reasoning": _REASONING,
    "roles": _ROLES,
    "texts": _TEXTS,
}
LANGUAGES = _LANGUAGES

# ------------------------------------------------------------------------------------------------ forms

CATEGORIES: tuple[Category, ...] = (
    Category("writing", "writing", ("general", "humanities"), (
        _m("asks for a blog post or article outline with several sections"),
        _m("asks for several alternatives at once, e.g. five titles, slogans or opening lines"),
        _m("asks for a letter, speech or email that must cover several listed points"),
        _m("asks for a short guide or newsletter with a few headed parts"),
        _s("asks for one short poem (a haiku, a limerick or four rhyming lines)"),
        _s("gives one sentence in quotes and asks to rewrite it in another tone"),
        _s("asks for one short email or text message with a single purpose"),
        _s("asks to fix the grammar of one sentence that is given in quotes"),
        _s("asks for a one-paragraph description or story opening"),
    )),
    Category("roleplay", "roleplay", ("roles",), (
        _m("asks the assistant to play the role and give several in-character tips or steps"),
        _m("asks the assistant to play the role and ask the user a few questions, one by one"),
        _m("asks the assistant to play the role and describe several places, items or options"),
        _s("asks the assistant to play the role and answer one line of dialogue given in quotes"),
        _s("asks the assistant to introduce itself in character in two or three sentences"),
        _s("asks the assistant to play the role and give a one-sentence reaction to a situation"),
    ), "general"),
    Category("reasoning", "logic and reasoning", ("reasoning",), (
        _m("states a small puzzle with concrete names and numbers and asks to solve it showing each step"),
        _m("describes a situation and asks for the possible explanations and which is most likely"),
        _m("gives a few statements and asks which conclusions follow and why"),
        _s("asks a short riddle"),
        _s("states a one-step logic question with a single answer"),
        _s("gives two premises and asks yes or no: does a stated conclusion follow"),
    ), "general"),
    Category("math", "math", ("math",), (
        _m("is a word problem with concrete numbers and two or three parts labelled (a), (b), (c)"),
        _m("asks to explain a method step by step with a worked example"),
        _m("asks to compare two options with numbers (e.g. two loans, two phone plans) and show the calculations"),
        _s("asks for one calculation with concrete numbers"),
        _s("gives one equation and asks for x"),
        _s("asks for one unit conversion or one percentage"),
    ), "general"),
    Category("coding", "programming", ("coding",), (
        _m("asks to build a small program in the given language with a few listed features"),
        _m("pastes a short code snippet (a few lines) in the given language and asks for a review with a list of issues"),
        _m("asks to compare two approaches or tools for the task, with pros and cons"),
        _m("asks to explain a concept related to the task with examples"),
        _s("asks for one function in the given language that does the task"),
        _s("pastes a short buggy snippet in the given language and asks for the one fix"),
        _s("asks for a one-line command, query or expression"),
        _s("asks what one specific error message means, quoting the message"),
    )),
    Category("extraction", "information extraction", ("texts",), (
        _m("includes a short made-up text (3 to 5 sentences) of the given kind, then asks to list several named fields from it"),
        _m("includes a short made-up text (3 to 5 sentences) of the given kind, then asks for its key points as bullets"),
        _m("includes a short made-up text of the given kind, then asks to turn its details into a small JSON object"),
        _s("includes a short made-up text (2 to 4 sentences) of the given kind, then asks for one specific detail from it"),
        _s("includes a short made-up text (2 to 4 sentences) of the given kind, then asks for its tone in one word"),
        _s("includes a short made-up text (2 to 4 sentences) of the given kind, then asks for a one-sentence summary"),
    )),
    Category("stem", "science and technology", ("science",), (
        _m("asks how something works, step by step"),
        _m("asks for the main factors or causes behind something"),
        _m("asks for several real-world applications or examples"),
        _m("asks to explain something to a beginner, covering a few aspects"),
        _s("asks for a one- or two-sentence definition"),
        _s("asks a single 'why' question with a short answer"),
        _s("asks for one formula, number or unit"),
    )),
    Category("humanities", "history, philosophy and the arts", ("humanities",), (
        _m("asks for the main causes and consequences of something"),
        _m("asks to summarize the key ideas or features of something"),
        _m("asks for different perspectives or interpretations of something"),
        _m("asks for a timeline of the main events or stages"),
        _s("asks one who, when or where question"),
        _s("asks what one term means"),
        _s("asks for a one-sentence explanation of why something mattered"),
    )),
    Category("advice", "advice", ("general",), (
        _m("describes a personal situation in a sentence or two and asks for tips"),
        _m("asks for a plan for the coming weeks"),
        _m("asks for the pros and cons of a decision the asker is facing"),
        _m("asks for a list of ideas"),
        _s("describes a situation briefly and asks a yes-or-no question about what to do"),
        _s("asks for the single most important first step"),
        _s("asks which of two things to choose, wanting a short answer"),
    )),
    Category("comparison", "comparison", ("general", "science", "humanities"), (
        _m("asks to compare two named things related to the topic across several aspects"),
        _m("asks for the pros and cons of two named options related to the topic"),
        _m("asks for the main differences between two related ideas"),
        _s("asks which of two named options is better for one specific need"),
        _s("asks whether one named thing is bigger, older, cheaper or faster than another"),
        _s("asks for the single main difference between two named things"),
    )),
    Category("howto", "how-to", ("general",), (
        _m("asks how to do something, step by step"),
        _m("asks for a checklist"),
        _m("asks for an itinerary, schedule or plan"),
        _m("asks what tools or materials are needed and how to use them"),
        _s("asks how to do one small, specific action"),
        _s("asks for the quickest way to do one thing"),
        _s("asks how long or how much of something is needed"),
    )),
    Category("knowledge", "general knowledge", ("general", "science", "humanities"), (
        _m("asks for an explanation that covers several aspects"),
        _m("asks for a list of examples, each with a sentence"),
        _m("asks for the history and development of something"),
        _m("asks for common myths and the facts behind them"),
        _s("asks what something is, in brief"),
        _s("asks why something happens, in brief"),
        _s("asks whether a common belief is true"),
    )),
    Category("factual", "short factual question", ("general", "science", "humanities"), (
        _m("asks for a short list of facts (e.g. the three largest, the main types)"),
        _m("asks for a few key dates or numbers"),
        _s("asks a who, what, when or where question with a one-line answer"),
        _s("asks a how-many or how-much question"),
        _s("asks a true-or-false question"),
        _s("asks what an abbreviation or word stands for"),
    )),
)

CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}

ASKERS = [
    "a high-school student", "a university student", "a retired teacher", "a nurse on night shifts",
    "a small-business owner", "a software developer", "a parent of two young children", "a student on a tight budget",
    "a first-time traveller", "a hobby gardener", "a project manager", "a new employee", "a graduate looking for work",
    "a grandparent", "a freelance designer", "a beginner", "someone curious", "a teacher preparing a lesson",
    "a data analyst", "a shop assistant", "a farmer", "an amateur cook", "a writer", "a sports coach",
    "a musician", "a researcher", "a volunteer", "a landlord", "a tenant", "a car owner", "a new pet owner",
    "a hiker", "an engineer", "a librarian", "a journalist", "an accountant", "someone recovering from an injury",
    "a person who just moved abroad", "a computer science student", "a hobby programmer",
]

TONES = [
    "casual and short", "polite and detailed", "direct", "friendly, with a bit of personal context",
    "curious", "a little stressed", "formal", "plain, all lowercase, like a quick search",
]

# ------------------------------------------------------------------------------------------------ examples

EXAMPLES: tuple[Example, ...] = (
    Example("writing", "asks for several alternatives at once, e.g. five titles, slogans or opening lines",
            "a bakery opening", "a small-business owner", "friendly, with a bit of personal context",
            "I'm opening a tiny bakery next month that only sells rye bread and cinnamon buns. Can you give me "
            "five short slogans for the sign above the door?"),
    Example("writing", "gives one sentence in quotes and asks to rewrite it in another tone", "late homework",
            "a teacher preparing a lesson", "direct",
            "Rewrite this so it sounds kind instead of strict: \"Homework handed in after Friday will not be marked.\""),
    Example("roleplay", "asks the assistant to play the role and answer one line of dialogue given in quotes",
            "a lighthouse keeper", "a writer", "casual and short",
            "Pretend you're a lighthouse keeper who hasn't seen a visitor in a year. I knock on your door and say: "
            "\"Sorry to bother you, my boat's engine died.\" What do you say?"),
    Example("roleplay", "asks the assistant to play the role and give several in-character tips or steps",
            "a beekeeper", "a hobby gardener", "friendly, with a bit of personal context",
            "Act as an old beekeeper teaching me, a total beginner, what to do during my first month with a hive. "
            "Stay in character and go through it step by step."),
    Example("reasoning", "states a small puzzle with concrete names and numbers and asks to solve it showing each step",
            "ordering a queue", "someone curious", "curious",
            "Five friends wait in a line for ice cream. Nadia is ahead of Tom but behind Jo. Priya is last, and Sam "
            "stands directly behind Jo. Who is first in the line? Please explain each step."),
    Example("reasoning", "asks a short riddle", "shadows", "a parent of two young children", "casual and short",
            "Give me a riddle for an 8-year-old where the answer is a shadow."),
    Example("math", "asks for one calculation with concrete numbers", "splitting a bill", "a student on a tight budget",
            "plain, all lowercase, like a quick search",
            "four of us paid 86.40 for dinner and want to leave a 15% tip, how much does each person pay"),
    Example("math", "is a word problem with concrete numbers and two or three parts labelled (a), (b), (c)",
            "filling a pool", "a high-school student", "direct",
            "A pool holds 24,000 litres. Pump A fills it in 8 hours and pump B in 12 hours. (a) How long do both pumps "
            "take together? (b) If pump B breaks after 2 hours, when is the pool full?"),
    Example("coding", "asks for one function in the given language that does the task", "checking a year (Go)",
            "a hobby programmer", "direct",
            "Write a Go function that returns true if a year is a leap year, with a short comment on the rule."),
    Example("coding", "asks to build a small program in the given language with a few listed features",
            "a reading log (Python)", "a computer science student", "polite and detailed",
            "Could you write a small Python command-line app for logging the books I read? It should let me add a "
            "book with title, author and rating, list all books sorted by rating, and save everything to a JSON file."),
    Example("extraction", "includes a short made-up text (2 to 4 sentences) of the given kind, then asks for one "
            "specific detail from it", "a parking notice", "a tenant", "direct",
            "From this notice, when may I park in the courtyard again?\n\n\"Dear residents, the courtyard will be "
            "resurfaced from 3 to 7 June. Please do not park there during the works. Parking is allowed again from "
            "the morning of 8 June.\""),
    Example("extraction", "includes a short made-up text (3 to 5 sentences) of the given kind, then asks to list "
            "several named fields from it", "a concert ticket email", "a musician", "casual and short",
            "Pull out the date, venue, seat number and price from this:\n\nThanks for your order! Your ticket for "
            "the Harbour Strings evening concert on 14 March at the Old Mill Hall is confirmed. You are in row F, "
            "seat 12. We charged 38 euros to your card ending in 4471."),
    Example("stem", "asks how something works, step by step", "induction cooktops", "an amateur cook", "curious",
            "How does an induction hob actually heat a pan without getting hot itself? Walk me through it."),
    Example("stem", "asks a single 'why' question with a short answer", "ice", "someone curious", "casual and short",
            "Why does ice float on water?"),
    Example("humanities", "asks for the main causes and consequences of something", "the Dust Bowl",
            "a university student", "formal",
            "What were the main causes of the Dust Bowl in the 1930s, and how did it change farming in the United States?"),
    Example("humanities", "asks what one term means", "the Hanseatic League", "a high-school student", "direct",
            "What was the Hanseatic League?"),
    Example("advice", "describes a personal situation in a sentence or two and asks for tips", "remote work loneliness",
            "a software developer", "a little stressed",
            "I've worked from home alone for two years and I'm starting to feel really isolated. What are some "
            "practical ways to feel more connected without quitting my job?"),
    Example("advice", "asks which of two things to choose, wanting a short answer", "learning an instrument",
            "a grandparent", "polite and detailed",
            "I'm 67 and want to learn an instrument. Would the ukulele or the piano be easier to start with?"),
    Example("comparison", "asks to compare two named things related to the topic across several aspects",
            "e-bikes", "a person who just moved abroad", "direct",
            "Compare an e-bike and a small scooter for a 12 km commute: cost, speed, safety and maintenance."),
    Example("comparison", "asks which of two named options is better for one specific need", "note-taking",
            "a university student", "casual and short",
            "Paper notebook or tablet for taking maths lecture notes?"),
    Example("howto", "asks for an itinerary, schedule or plan", "a weekend in Edinburgh", "a first-time traveller",
            "friendly, with a bit of personal context",
            "My sister and I are spending two days in Edinburgh in October. Can you plan an itinerary with a mix of "
            "history, good food and a short hike?"),
    Example("howto", "asks how to do one small, specific action", "sewing", "a beginner", "plain, all lowercase, "
            "like a quick search", "how do i sew a button back onto a shirt"),
    Example("knowledge", "asks for common myths and the facts behind them", "goldfish", "a new pet owner", "curious",
            "What are some common myths about goldfish, and what's actually true?"),
    Example("knowledge", "asks what something is, in brief", "a credit union", "a graduate looking for work", "direct",
            "What is a credit union, in simple terms?"),
    Example("factual", "asks a who, what, when or where question with a one-line answer", "the Eiffel Tower",
            "someone curious", "casual and short", "When was the Eiffel Tower finished?"),
    Example("factual", "asks a how-many or how-much question", "the human skeleton", "a nurse on night shifts",
            "plain, all lowercase, like a quick search", "how many bones does an adult human have"),
)

SYSTEM = (
    "You write messages that real people send to an AI assistant. You are given a category, a topic, the form "
    "the message should take, who is asking and the tone. Write exactly one such message, as the person would "
    "type it. Do not answer it. Output only the message: no title, no label, no quotation marks around it, "
    "no explanation."
)
