"""Knights and Knaves generator: unique solutions (checked by an independent brute force), seeded
splits, wording, and agreement with the knights_knaves reward."""

import itertools
import json
import random
import re

import pytest

from envs.knights_knaves import (
    DEFAULT_INSTRUCTION,
    DEFAULT_REWARDS,
    DEFAULT_SYSTEM_PROMPT,
    DISTRIBUTIONS,
    NAMES,
    Puzzle,
    answer_text,
    build_splits,
    generate_puzzle,
    parse_distribution,
    question_text,
    solve,
)
from envs.prompts import PromptStyle
from rewards.format import think_answer_format
from rewards.knights_knaves import knights_knaves

STYLE = PromptStyle(DEFAULT_SYSTEM_PROMPT, DEFAULT_INSTRUCTION)
BINARY = {"and", "or", "implies", "iff"}


# An evaluator of the statement trees of its own, so that the module's evaluator is not trusted.
def literal_holds(tree, roles):
    assert set(tree) == {"op", "who", "role"} and tree["op"] == "is" and tree["role"] in ("knight", "knave")
    return roles[tree["who"]] if tree["role"] == "knight" else not roles[tree["who"]]


def holds(tree, roles):
    op = tree["op"]
    if op == "is":
        return literal_holds(tree, roles)
    if op == "not":
        return not literal_holds(tree["arg"], roles)
    if op in ("same", "different"):
        i, j = tree["args"]
        return (roles[i] == roles[j]) == (op == "same")
    a, b = (literal_holds(arg, roles) for arg in tree["args"])
    return {"and": a and b, "or": a or b, "implies": (not a) or b, "iff": a == b}[op]


def brute_force(statements):
    """All role tuples (True = knight) where every speaker's statement is true exactly for knights."""
    n = len(statements)
    found = []
    for roles in itertools.product([True, False], repeat=n):
        for speaker in range(n):
            if holds(statements[speaker], roles) != roles[speaker]:
                break
        else:
            found.append(roles)
    return found


def people_of(tree):
    if tree["op"] == "is":
        return [tree["who"]]
    if tree["op"] == "not":
        return [tree["arg"]["who"]]
    if tree["op"] in ("same", "different"):
        return list(tree["args"])
    return [arg["who"] for arg in tree["args"]]


@pytest.fixture(scope="module")
def many_tasks():
    """17 tasks per size, 3..14 people: 204 in all (train and test)."""
    return {name: build_splits(name, 12, 5, seed=11, style=STYLE) for name in DISTRIBUTIONS}


def test_every_puzzle_has_exactly_the_stated_solution(many_tasks):
    checked = 0
    for name, (train, test) in many_tasks.items():
        n = parse_distribution(name)
        for task in train + test:
            meta = task.metadata
            assert json.loads(json.dumps(meta)) == meta  # travels as plain JSON
            statements, names = meta["statements"], meta["names"]
            assert len(statements) == len(names) == n == len(set(names))
            for tree in statements:
                people = people_of(tree)
                assert all(0 <= p < n for p in people)
                if tree["op"] in BINARY or tree["op"] in ("same", "different"):
                    assert len(people) == 2 and people[0] != people[1]
            solutions = brute_force(statements)
            assert len(solutions) == 1, (task.task_id, solutions)
            expected = {nm: ("knight" if knight else "knave") for nm, knight in zip(names, solutions[0])}
            assert meta["solution"] == expected
            assert list(meta["solution"]) == names
            checked += 1
    assert checked == 17 * 12


def test_solve_matches_brute_force():
    # Hand-made cases: every role fits, a paradox, and a classic one-solution puzzle.
    me_knight = [{"op": "is", "who": i, "role": "knight"} for i in range(3)]
    assert sorted(solve(3, me_knight)) == sorted(itertools.product([True, False], repeat=3))
    assert solve(3, [{"op": "is", "who": 0, "role": "knave"}] + me_knight[1:]) == []
    # A: "B is a knave"; B: "A and I are of the same kind"; C: "A is a knave or B is a knave".
    classic = [
        {"op": "is", "who": 1, "role": "knave"},
        {"op": "same", "args": [0, 1]},
        {"op": "or", "args": [{"op": "is", "who": 0, "role": "knave"}, {"op": "is", "who": 1, "role": "knave"}]},
    ]
    assert solve(3, classic) == brute_force(classic) == [(True, False, True)]
    rng = random.Random(5)
    for n in (3, 6, 9):
        puzzle = generate_puzzle(n, rng)
        statements = list(puzzle.statements)
        assert solve(n, statements) == brute_force(statements) == [puzzle.solution]
        # Drop one statement's information: make it the tautology "I am a knight"; both agree again.
        statements[0] = {"op": "is", "who": 0, "role": "knight"}
        assert sorted(solve(n, statements)) == sorted(brute_force(statements))


def test_splits_are_reproducible_by_seed():
    first = build_splits("kk_5p", 20, 6, seed=3, style=STYLE)
    again = build_splits("kk_5p", 20, 6, seed=3, style=STYLE)
    other = build_splits("kk_5p", 20, 6, seed=4, style=STYLE)
    dump = lambda split: [task.model_dump() for task in split]
    assert dump(first[0]) == dump(again[0]) and dump(first[1]) == dump(again[1])
    assert dump(first[0]) != dump(other[0]) and dump(first[1]) != dump(other[1])
    # The draw is random.Random(f"{seed}-{name}"): the distribution's name is part of the seed.
    rng = random.Random("3-kk_5p")
    assert [generate_puzzle(5, rng) for _ in range(3)] == \
        [Puzzle(tuple(t.metadata["names"]), tuple(t.metadata["statements"]),
                tuple(r == "knight" for r in t.metadata["solution"].values())) for t in first[1][:3]]


def test_draws_are_distinct_even_under_other_names(monkeypatch):
    import envs.knights_knaves as kk

    real = kk.generate_puzzle
    pending = []

    def twice(n, rng):  # every puzzle comes back a second time under other names
        if pending:
            puzzle = pending.pop()
            return Puzzle(tuple(reversed(puzzle.names)), puzzle.statements, puzzle.solution)
        pending.append(real(n, rng))
        return pending[-1]

    monkeypatch.setattr(kk, "generate_puzzle", twice)
    train, test = kk.build_splits("kk_4p", 30, 10, seed=1, style=STYLE)
    statements = [json.dumps(t.metadata["statements"]) for t in train + test]
    assert len(statements) == 40 and len(set(statements)) == 40


def test_train_and_test_are_disjoint_with_the_requested_shape():
    train, test = build_splits("kk_3p", 150, 40, seed=0, style=STYLE)
    assert (len(train), len(test)) == (150, 40)
    assert [t.task_id for t in test] == [f"kk_3p/test/{i}" for i in range(40)]
    assert [t.task_id for t in train] == [f"kk_3p/train/{i}" for i in range(150)]
    assert {t.distribution for t in train + test} == {"kk_3p"}
    assert {t.messages[-1].content for t in train}.isdisjoint(t.messages[-1].content for t in test)
    # Distinct even with names ignored: no puzzle appears twice under other names.
    keys = [json.dumps([t.metadata["statements"], list(t.metadata["solution"].values())]) for t in train + test]
    assert len(set(keys)) == len(keys)
    # Test is a prefix of the draw: a bigger train split leaves the test split as it was.
    assert [t.model_dump() for t in build_splits("kk_3p", 10, 40, seed=0, style=STYLE)[1]] == \
        [t.model_dump() for t in test]
    with pytest.raises(ValueError, match="few_shot"):
        build_splits("kk_3p", 10, 5, seed=0, style=STYLE, few_shot=2)


def test_wording_of_every_statement_kind():
    names = ("Zoey", "Oliver", "Ava", "Liam", "Mia", "Noah", "Emma", "Hugo")
    lit = lambda who, role: {"op": "is", "who": who, "role": role}
    statements = (
        {"op": "and", "args": [lit(1, "knave"), lit(2, "knight")]},
        {"op": "not", "arg": lit(1, "knave")},
        {"op": "implies", "args": [lit(0, "knight"), lit(3, "knave")]},
        {"op": "same", "args": [3, 1]},
        {"op": "iff", "args": [lit(4, "knight"), lit(5, "knave")]},
        {"op": "or", "args": [lit(0, "knave"), lit(7, "knight")]},
        {"op": "different", "args": [0, 2]},
        lit(7, "knave"),
    )
    puzzle = Puzzle(names=names, statements=statements, solution=(True,) * 8)
    text = question_text(puzzle)
    expected = [
        'Zoey says, "Oliver is a knave and Ava is a knight."',
        'Oliver says, "It is not the case that I am a knave."',
        'Ava says, "If Zoey is a knight, then Liam is a knave."',
        'Liam says, "Oliver and I are of the same kind."',
        'Mia says, "I am a knight if and only if Noah is a knave."',
        'Noah says, "Zoey is a knave or Hugo is a knight."',
        'Emma says, "Zoey and Ava are of different kinds."',
        'Hugo says, "I am a knave."',
    ]
    lines = text.splitlines()
    assert lines[2:10] == expected
    assert "You meet 8 inhabitants: Zoey, Oliver, Ava, Liam, Mia, Noah, Emma and Hugo." in lines
    assert "knight" in lines[0] and "knave" in lines[0] and "truth" in lines[0] and "lie" in lines[0]
    assert lines[-1].endswith("?")
    assert answer_text(puzzle).splitlines()[:2] == ["(1) Zoey is a knight", "(2) Oliver is a knight"]


def test_question_mentions_every_name_and_statement(many_tasks):
    for train, test in many_tasks.values():
        for task in (train[0], test[-1]):
            text = task.messages[-1].content
            names = task.metadata["names"]
            assert f"You meet {len(names)} inhabitants: {', '.join(names[:-1])} and {names[-1]}." in text
            said = [line for line in text.splitlines() if re.match(r'^[A-Z][a-z]+ says, ".*\."$', line)]
            assert [line.split(" says,")[0] for line in said] == names
            for speaker, (line, tree) in enumerate(zip(said, task.metadata["statements"])):
                for who in people_of(tree):
                    word = "I" if who == speaker else names[who]
                    assert re.search(rf"\b{word}\b", line.split(" says, ")[1]), (line, tree)
            assert task.messages[0].role == "system" and task.messages[0].content == DEFAULT_SYSTEM_PROMPT
            assert text.endswith(DEFAULT_INSTRUCTION)


def test_names_and_distribution_names():
    assert len(NAMES) >= 60 and len(set(NAMES)) == len(NAMES)
    assert all(re.fullmatch(r"[A-Z][a-z]+", name) for name in NAMES)
    assert DISTRIBUTIONS == [f"kk_{n}p" for n in range(3, 15)]
    assert [parse_distribution(name) for name in DISTRIBUTIONS] == list(range(3, 15))
    for bad in ("kk_2p", "kk_15p", "kk", "kk_5", "kk_05p", "KK_5p", "kk_p", "add_2d", "kk_5p "):
        with pytest.raises(ValueError, match="kk_3p"):
            parse_distribution(bad)
    with pytest.raises(ValueError):
        generate_puzzle(15, random.Random(0))
    assert [r["name"] for r in DEFAULT_REWARDS] == ["knights_knaves", "format"]


def test_reward_reads_the_reference_answer(many_tasks):
    for _, test in many_tasks.values():
        task = test[0]
        right = f"<think>checked every statement</think>\n<answer>\n{task.answer}\n</answer>"
        assert knights_knaves(right, task) == 2.0
        assert think_answer_format(right, task) == 1.0
        first = task.metadata["names"][0]
        role = task.metadata["solution"][first]
        flipped = task.answer.replace(f"{first} is a {role}", f"{first} is a {'knave' if role == 'knight' else 'knight'}")
        assert flipped != task.answer
        assert knights_knaves(f"<think>x</think><answer>{flipped}</answer>", task) == -1.5
        missing = "\n".join(task.answer.splitlines()[1:])
        assert knights_knaves(f"<think>x</think><answer>{missing}</answer>", task) == -2.0
