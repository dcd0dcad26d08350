"""`aspd prompts requests | collect | merge | decontaminate | import` through the real CLI entry point."""

import gzip
import json
import zipfile
from collections import Counter

import pytest
from jsonlutil import write_jsonl

from aspd.cli import main as cli_main
from aspd.prompts.collect import clean_reply
from aspd.prompts.decontam import Rules, find_hits, load_bench_items, split_rag
from aspd.prompts.seeds import CATEGORIES, EXAMPLES, TOPICS
from aspd.sample import record_messages


def read(path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------ requests


def test_requests_balanced_deterministic_and_readable_by_distill(tmp_path):
    out = tmp_path / "req.jsonl.gz"
    assert cli_main(["prompts", "requests", "--output", str(out), "--n", "520", "--seed", "3"]) == 0
    rows = read(out)
    assert len(rows) == 520 and len({r["id"] for r in rows}) == 520
    per_cat = Counter(r["category"] for r in rows)
    assert set(per_cat) == {c.name for c in CATEGORIES} and set(per_cat.values()) == {40}
    for cat in per_cat:
        assert sum(r["multipart"] for r in rows if r["category"] == cat) == 20  # alternating flag
    # every topic of a category's pools is dealt before any repeats; small pools get an everyday setting
    roles = [r["topic"].split("; setting: ") for r in rows if r["category"] == "roleplay"]
    assert len({role for role, _ in roles}) == len(roles) == 40 == len(TOPICS["roles"])
    assert {setting for _, setting in roles} <= set(TOPICS["general"])
    for r in rows[:30]:
        msgs, answer = record_messages(r)  # the shape `aspd distill --prompts` reads
        assert answer is None and msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
        assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * 2 + ["user"]
        assert r["topic"] in msgs[-1]["content"] and r["form"] in msgs[-1]["content"]
        assert r["source"] == "aspd-synth"
    again = tmp_path / "again.jsonl.gz"
    assert cli_main(["prompts", "requests", "--output", str(again), "--n", "520", "--seed", "3"]) == 0
    assert again.read_bytes() == out.read_bytes()  # same seed, same bytes (gzip header without name or time)
    other = tmp_path / "other.jsonl"
    assert cli_main(["prompts", "requests", "--output", str(other), "--n", "520", "--seed", "4"]) == 0
    assert [r["messages"] for r in read(other)] != [r["messages"] for r in rows]


def test_requests_bad_arguments_are_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "r.jsonl")
    assert cli_main(["prompts", "requests", "--output", out, "--n", "0"]) == 2
    assert cli_main(["prompts", "requests", "--output", out, "--n", "5", "--categories", "poetry"]) == 2
    err = capsys.readouterr().err
    assert "at least 1" in err and "no known category" in err and "Traceback" not in err


def test_seed_material_is_large_and_every_category_has_both_kinds_of_form():
    assert sum(len(v) for v in TOPICS.values()) >= 500
    for c in CATEGORIES:
        assert {f.multipart for f in c.forms} == {True, False}, c.name
        assert any(e.category == c.name for e in EXAMPLES), c.name


# ------------------------------------------------------------------------------------------------ collect


@pytest.mark.parametrize("reply, category, finish, expect", [
    ("Question: How do I keep basil alive on a windowsill?", "howto", "stop",
     "How do I keep basil alive on a windowsill?"),
    ('"What is the boiling point of water at the top of Everest?"', "factual", "stop",
     "What is the boiling point of water at the top of Everest?"),
    ("Sure! Here's a realistic message:\n**User message:** Compare tea and coffee for focus.", "comparison",
     "stop", "Compare tea and coffee for focus."),
    ("Here are my notes: the meeting moved to Friday at 3pm in room B. What day is the meeting?", "extraction",
     "stop", "Here are my notes: the meeting moved to Friday at 3pm in room B. What day is the meeting?"),
    ("Fix this:\n```python\nprint(1/0)\n```\nWhy does this crash and how do I handle it?", "coding", "stop",
     "Fix this:\n```python\nprint(1/0)\n```\nWhy does this crash and how do I handle it?"),
    ("Here are four statements:\n1. Some birds swim.\n2. All penguins are birds.\nWhich conclusion follows?",
     "reasoning", "stop", "Here are four statements:\n1. Some birds swim.\n2. All penguins are birds.\nWhich conclusion follows?"),
    ("Write a limerick about a cat who hates Mondays.", "writing", "stop", "Write a limerick about a cat who hates Mondays."),
    ("I'm moving to Oslo in January. Please suggest warm but light clothes for cycling to work.", "advice", "stop",
     "I'm moving to Oslo in January. Please suggest warm but light clothes for cycling to work."),
    ("Order #4471: two lamps, shipped 3 May to Leeds, total 58 pounds. Pull out the order number and the city.",
     "extraction", "stop",
     "Order #4471: two lamps, shipped 3 May to Leeds, total 58 pounds. Pull out the order number and the city."),
])
def test_clean_reply_keeps_and_unwraps(reply, category, finish, expect):
    assert clean_reply(reply, category, finish) == (expect, "ok")


@pytest.mark.parametrize("reply, category, finish, reason", [
    ("How do I fix a bike chain", "howto", "length", "cut_by_length_limit"),
    ("   ", "howto", "stop", "empty"),
    ("Sure! Here are five tips for sleeping better: 1. Keep a schedule.", "advice", "stop", "answer_or_comment"),
    ("Here are five slogans for your bakery: Fresh every morning. Rye and shine.", "writing", "stop",
     "not_a_request"),
    ("What is a prime number?\nAnswer: a number with exactly two divisors.", "factual", "stop", "answer_or_comment"),
    ("1. What is photosynthesis?\n2. Why are leaves green?", "stem", "stop", "several_questions"),
    ("```python\ndef f(x):\n    return x\n```", "coding", "stop", "code"),
    ("Tell me about this:\n```\nls -la\n```", "knowledge", "stop", "code"),
    ("Why?", "knowledge", "stop", "too_short"),
    ("Please explain " + "very " * 200 + "slowly.", "knowledge", "stop", "too_long"),
    ("¿Cuál es la capital de Australia y por qué no es Sídney?", "factual", "stop", "not_english"),
    ("什么是光合作用？请简单解释一下它的过程", "stem", "stop", "not_english"),
    ("Category: math\nTopic: fractions\nWrite the message.", "math", "stop", "echoed_request"),
    ("Why does ice float on water?", "stem", "stop", "copied_example"),
    ('The sentence "Stoicism teaches calm" is grammatically correct.', "writing", "stop", "not_a_request"),
    # replies from the real teacher (probe): an answer, a bare text, the assistant speaking in character
    ("To ask for a raise, you'll need to gather some facts first. First, make a list of your wins. Then, prepare "
     "a short proposal for your manager.", "howto", "stop", "not_a_request"),
    ("Your appointment is next Monday at 10 am at the clinic near the airport. Please bring your ID. Let me know "
     "if there are special instructions.", "extraction", "stop", "not_a_request"),
    ("I am Captain Jack, ready to help you sail the stormy Atlantic. How may I assist you today?", "roleplay", "stop",
     "answer_or_comment"),
])
def test_clean_reply_drops_with_a_reason(reply, category, finish, reason):
    assert clean_reply(reply, category, finish) == (None, reason)


def test_collect_cli_writes_prompt_records_and_counts(tmp_path):
    answered = [
        {"id": "a", "source": "aspd-synth", "category": "howto", "multipart": True, "messages": [],
         "answer": "Question: How do I plan a three-day hike in the Lake District with kids?", "finish": "stop"},
        {"id": "b", "source": "aspd-synth", "category": "math", "multipart": False, "messages": [],
         "answer": "What is 15% of 240? The answer is 36.\nAnswer: 36", "finish": "stop"},
        {"id": "c", "source": "aspd-synth", "category": "stem", "multipart": False, "messages": [],
         "answer": "What is", "finish": "length"},
    ]
    out, rep = tmp_path / "synth.jsonl", tmp_path / "collect.json"
    assert cli_main(["prompts", "collect", "--input", write_jsonl(tmp_path / "ans.jsonl", answered), "--output", str(out),
                     "--report", str(rep)]) == 0
    assert read(out) == [{"id": "a", "source": "aspd-synth", "category": "howto", "multipart": True,
                          "prompt": "How do I plan a three-day hike in the Lake District with kids?"}]
    report = json.loads(rep.read_text())
    assert report["kept"] == 1 and report["dropped"] == {"answer_or_comment": 1, "cut_by_length_limit": 1}
    assert report["by_category"]["math"] == {"answer_or_comment": 1}


def test_collect_rejects_records_without_answers(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "category": "math", "messages": []}])
    assert cli_main(["prompts", "collect", "--input", bad, "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl:1: missing 'answer'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ merge

LONG = ("I am planning a two-week trip to Portugal in late September with my partner. We like hiking, seafood "
        "and small towns more than big cities. Could you suggest a route that starts in Porto and ends in Lisbon?")
NEAR = LONG.replace("two-week", "three-week").replace("seafood", "good wine")


def test_merge_removes_exact_and_near_duplicates_keeping_the_first(tmp_path):
    shared = write_jsonl(tmp_path / "train_prompts.jsonl", [
        {"id": "s-1", "source": "yizhongw/self-instruct", "category": "planning", "prompt": LONG, "context": "",
         "source_category": "x"},
        {"id": "s-2", "source": "f/awesome", "category": "writing", "prompt": "Write a haiku about rain.",
         "context": "It is raining."},
    ])
    synth = write_jsonl(tmp_path / "synth.jsonl", [
        {"id": "n-1", "source": "aspd-synth", "category": "howto", "multipart": True, "prompt": NEAR},
        {"id": "n-2", "source": "aspd-synth", "category": "writing", "multipart": False,
         "prompt": "  WRITE a haiku about   rain.\n\nIt is raining. "},
        {"id": "n-3", "source": "aspd-synth", "category": "comparison", "multipart": True,
         "prompt": "What are the pros and cons of electric cars?"},
        {"id": "n-4", "source": "aspd-synth", "category": "comparison", "multipart": True,
         "prompt": "What are the pros and cons of solar panels?"},
        {"id": "n-5", "source": "aspd-synth", "category": "writing", "multipart": False,
         "prompt": "Write a haiku about rain."},  # same prompt as s-2 but without its context: a different task
    ])
    plain = write_jsonl(tmp_path / "extra.jsonl", [{"prompt": "How many legs does a spider have?"}])
    out, rep = tmp_path / "all.jsonl", tmp_path / "merge.json"
    assert cli_main(["prompts", "merge", "--input", shared, "--input", synth, "--input", plain,
                     "--output", str(out), "--report", str(rep)]) == 0
    got = read(out)
    assert [r["id"] for r in got] == ["s-1", "s-2", "n-3", "n-4", "n-5", "extra-1"]
    assert got[0]["source_category"] == "x" and got[1]["context"] == "It is raining."  # fields kept
    assert got[-1]["source"] == "extra"  # records without a source get the file's name
    report = json.loads(rep.read_text())
    assert report["removed"] == {"exact": 1, "near": 1} and report["kept"] == 6 and report["records_in"] == 8
    assert report["by_source"]["aspd-synth"] == {"in": 5, "near_duplicate": 1, "exact_duplicate": 1, "kept": 3}
    dups = {d["id"]: d for d in report["duplicates"]}
    assert dups["n-1"]["duplicate_of"] == "s-1" and 0.7 <= dups["n-1"]["jaccard"] < 1
    assert dups["n-2"] == {"id": "n-2", "duplicate_of": "s-2", "kind": "exact", "jaccard": 1.0}
    assert report["kept_by_multipart"] == {"true": 2, "false": 1, "unknown": 3}
    assert report["kept_by_source_and_category"]["aspd-synth"] == {"comparison": 2, "writing": 1}


def test_merge_errors_name_the_line(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "prompt": "What is rain?"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "1", "prompt": "What is snow?"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"id": "2", "question": "What is hail?"}])
    d = write_jsonl(tmp_path / "d.jsonl", ["{not json"])
    for files, message in [([a, b], "b.jsonl:1: id '1' already used at"), ([c], "c.jsonl:1: needs a non-empty"),
                           ([d], "d.jsonl:1: not valid JSON")]:
        args = ["prompts", "merge", "--output", str(tmp_path / "o.jsonl"), "--report", str(tmp_path / "r.json")]
        assert cli_main(args + [x for f in files for x in ("--input", f)]) == 2
        assert message in capsys.readouterr().err
    assert cli_main(["prompts", "merge", "--input", a, "--output", str(tmp_path / "o.jsonl"), "--report",
                     str(tmp_path / "r.json"), "--near", "0.3"]) == 2
    assert "threshold must be in" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ decontaminate

MT1 = ("Draft a professional email seeking your supervisor's feedback on the 'Quarterly Financial Report' you "
       "prepared. Ask specifically about the data analysis, presentation style, and the clarity of conclusions drawn.")
MT2 = "Take a moment to evaluate and critique your own response."
VIC = "How can I improve my time management skills?"
RAG_Q = "Who is the music director of the Quebec Symphony Orchestra?"
RAG_CTX = ("HOUSTON - Fabien Gabel, music director of the Quebec Symphony Orchestra, returns to Houston to lead the "
           "Houston Symphony in Ravel's Daphnis and Chloe on Feb. 2 and 3 in Jones Hall. Recognized internationally "
           "as one of the stars of the new generation, Gabel is a regular guest of the Houston Symphony and an "
           "audience favorite. The evening's featured soloist, Colin Currie, is hailed as the world's finest and "
           "most daring percussionist, and performs regularly with the world's leading orchestras.")


@pytest.fixture()
def bench_dir(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    write_jsonl(d / "vicuna_bench.jsonl", [{"question_id": 1, "category": "generic", "turns": [VIC]}])
    write_jsonl(d / "mt_bench.jsonl", [{"question_id": 82, "category": "writing", "turns": [MT1, MT2],
                                  "reference": ["not a question"]}])
    write_jsonl(d / "rag_bench.jsonl", [{"question_id": 1, "category": "rag",
                                   "turns": [f"context:\n{RAG_CTX}\n###\nquestion:{RAG_Q}"]}])
    return d


def test_split_rag_and_bench_items(bench_dir):
    assert split_rag(f"context:\n{RAG_CTX}\nquestion:{RAG_Q}") == (RAG_Q, RAG_CTX)
    assert split_rag("What is the question: life?") is None
    items = {it.id: it.text for its in load_bench_items(bench_dir).values() for it in its}
    assert items == {"vicuna_bench:1": VIC, "mt_bench:82:turn1": MT1, "mt_bench:82:turn2": MT2,
                     "rag_bench:1:question": RAG_Q, "rag_bench:1:context": RAG_CTX}


def test_decontaminate_catches_planted_copies_and_keeps_the_rest(tmp_path, bench_dir):
    planted = [
        ("exact-vicuna", "how can I improve my time-management skills?"),
        ("near-mt1", MT1.replace("professional", "polite").replace("supervisor's", "manager's")
         .replace("clarity", "strength")),
        ("contained-mt2", "Here is an essay I wrote about whales. " + MT2 + " Be honest about its weaknesses."),
        ("near-rag-q", "Who is the music director of the Quebec Symphony orchestra today?"),
        ("rag-passage", "Summarize this: Recognized internationally as one of the stars of the new generation, "
                        "Gabel is a regular guest of the Houston Symphony and an audience favorite."),
        ("keep-1", "How can I improve my handwriting?"),
        ("keep-2", "Draft an email to my landlord asking when the broken heater in the kitchen will be repaired."),
        ("keep-3", "Who founded the Berlin Philharmonic?"),
        ("keep-4", "Write a short poem about autumn leaves falling in a quiet park."),
    ]
    prompts = write_jsonl(tmp_path / "all.jsonl", [{"id": i, "source": "t", "prompt": p} for i, p in planted])
    out, rep = tmp_path / "clean.jsonl", tmp_path / "decontam.json"
    assert cli_main(["prompts", "decontaminate", "--input", prompts, "--bench-dir", str(bench_dir),
                     "--output", str(out), "--report", str(rep)]) == 0
    assert [r["id"] for r in read(out)] == ["keep-1", "keep-2", "keep-3", "keep-4"]
    report = json.loads(rep.read_text())
    hits = {h["id"]: h for h in report["hits"]}
    assert set(hits) == {"exact-vicuna", "near-mt1", "contained-mt2", "near-rag-q", "rag-passage"}
    assert hits["exact-vicuna"] == {**hits["exact-vicuna"], "bench_id": "vicuna_bench:1", "rule": "jaccard",
                                    "score": 1.0}
    assert hits["near-mt1"]["bench_id"] == "mt_bench:82:turn1" and 0.6 <= hits["near-mt1"]["jaccard"] < 1
    assert hits["contained-mt2"]["bench_id"] == "mt_bench:82:turn2"
    assert hits["contained-mt2"]["rule"] == "bench_in_prompt" and hits["contained-mt2"]["jaccard"] < 0.6
    assert hits["near-rag-q"]["bench_id"] == "rag_bench:1:question"
    assert hits["rag-passage"]["bench_id"] == "rag_bench:1:context" and hits["rag-passage"]["rule"] == "prompt_in_bench"
    assert report["removed"] == 5 and report["kept"] == 4
    assert report["bench_items"] == {str(bench_dir / f): n for f, n in
                                     [("vicuna_bench.jsonl", 1), ("mt_bench.jsonl", 2), ("rag_bench.jsonl", 2)]}


def test_index_finds_the_same_hits_as_checking_every_pair():
    """The inverted-index counts (in chunks of 7 prompts) must equal brute force over all pairs."""
    import random

    from aspd.prompts.decontam import BenchItem
    from aspd.prompts.text import overlap, shingles

    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran past red blue green houses near rivers".split()

    def some(k: int) -> list[str]:
        return rng.choices(words, k=k)

    bench = [" ".join(some(rng.randint(3, 40))) for _ in range(40)]
    prompts = []
    for b in bench:  # copies, one word changed, embedded, a piece of it, shuffled, unrelated
        w = b.split()
        changed = w.copy()
        changed[rng.randrange(len(w))] = rng.choice(words)
        cut = rng.randrange(len(w))
        prompts += [b, " ".join(changed), " ".join(some(5) + w + some(5)), " ".join(w[cut : cut + 12]),
                    " ".join(rng.sample(w, len(w))), " ".join(some(rng.randint(3, 40)))]
    rules = Rules(0.6, 0.9, 10)
    got = {(h.index, h.bench_id) for h in find_hits(prompts, [BenchItem(str(j), b) for j, b in enumerate(bench)], rules, 7)}
    want = set()
    b_sets = [shingles(b) for b in bench]
    for i, p in enumerate(prompts):
        sp = shingles(p)
        for j, sb in enumerate(b_sets):
            n = overlap(sp, sb)
            if n / (sp.size + sb.size - n) >= 0.6 or n / sb.size >= 0.9 or (sp.size >= 10 and n / sp.size >= 0.9):
                want.add((i, str(j)))
    assert got == want and len(want) > 100


def test_decontaminate_missing_bench_file_is_an_error(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi there friend"}])
    assert cli_main(["prompts", "decontaminate", "--input", prompts, "--bench-dir", str(tmp_path / "b"),
                     "--output", str(tmp_path / "o.jsonl"), "--report", str(tmp_path / "r.json")]) == 2
    assert "bench file(s) not found" in capsys.readouterr().err


def test_seed_examples_do_not_overlap_the_real_bench():
    from aspd.bench.data import BenchDataError, find_bench_dir

    try:
        items = [it for its in load_bench_items(find_bench_dir()).values() for it in its]
    except BenchDataError:
        pytest.skip("no shared bench directory here")
    assert find_hits([e.message for e in EXAMPLES], items) == []


# ------------------------------------------------------------------------------------------------ import


def fake_chatterbot_wheel(path, name="chatterbot-corpus"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("chatterbot_corpus-1.3.3.dist-info/METADATA",
                   f"Metadata-Version: 2.4\nName: {name}\nVersion: 1.3.3\n\nbody\n")
        for stem in ("trivia", "coding", "computers", "science", "history", "tech_support", "greetings"):
            convs = {"trivia": "- - Who was the first person to walk on the Moon?\n  - Neil Armstrong\n"
                               "- - Dolphins\n  - Echolocation\n",
                     "coding": "- - can you write bubble sort?\n  - sure\n",
                     "greetings": "- - Hello there, how are you doing today?\n  - Fine\n"}.get(stem, "")
            z.writestr(f"chatterbot_corpus/data/english/{stem}.yml", f"categories:\n- {stem}\nconversations:\n{convs}")
    return str(path)


def test_import_chatterbot_corpus(tmp_path, capsys):
    out = tmp_path / "cb.jsonl"
    assert cli_main(["prompts", "import", "chatterbot-corpus", "--wheel", fake_chatterbot_wheel(tmp_path / "w.whl"),
                     "--output", str(out)]) == 0
    assert read(out) == [
        {"id": "chatterbot-trivia-1", "source": "chatterbot-corpus==1.3.3", "category": "factual",
         "multipart": False, "prompt": "Who was the first person to walk on the Moon?"},
        {"id": "chatterbot-coding-1", "source": "chatterbot-corpus==1.3.3", "category": "coding",
         "multipart": False, "prompt": "can you write bubble sort?"},
    ]  # greetings are not read; a short clue ("Dolphins") is skipped
    assert '"license": "BSD-3-Clause"' in capsys.readouterr().err
    wrong = fake_chatterbot_wheel(tmp_path / "x.whl", name="other-pkg")
    assert cli_main(["prompts", "import", "chatterbot-corpus", "--wheel", wrong, "--output", str(out)]) == 2
    assert "expected chatterbot-corpus" in capsys.readouterr().err


def test_shipped_requests_match_the_generator():
    """data/prompts/synth_requests.jsonl.gz is `requests --n 32000 --seed 0`; rows are prefix-stable in n."""
    from pathlib import Path

    from aspd.prompts.requests import build_requests

    path = Path(__file__).resolve().parents[1] / "data" / "prompts" / "synth_requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        head = [json.loads(next(f)) for _ in range(300)]
        assert sum(1 for _ in f) == 32000 - 300
    assert head == build_requests(300, seed=0)
