"""Knights and Knaves logic puzzles with 3 to 14 inhabitants, one distribution per size.

The distributions `kk_3p` ... `kk_14p` follow the K&K task of Xie et al. (2024, "On Memorization
of Large Language Models in Logical Reasoning") as trained on by DUMP: every inhabitant is a
knight (always truthful) or a knave (always lying), each makes one statement about one or two
inhabitants (possibly themselves), and the statements admit exactly one assignment of roles.

A statement is a JSON-serialisable tree, so it can travel in a task's metadata:

    {"op": "is", "who": 2, "role": "knight"}                       a literal: "Ava is a knight"
    {"op": "not", "arg": <literal>}                                 "It is not the case that ..."
    {"op": "and" | "or" | "implies" | "iff", "args": [<literal>, <literal>]}
    {"op": "same" | "different", "args": [i, j]}                    "Ava and Liam are of the same kind"

"or" is inclusive and "implies" is material implication ("If A, then B" is false only when A
holds and B does not); the question says so. The two people of a two-person statement differ.

Generation: draw the hidden roles, then give each inhabitant (in a random order) a statement
whose truth under the hidden roles equals "this inhabitant is a knight", so the hidden roles are
always consistent. The assignments still consistent with the statements so far are kept as a
numpy array of bitmasks (bit i set = inhabitant i is a knight); a few candidate statements are
evaluated on them at once and the one that leaves the fewest survivors is kept. If more than one
assignment survives the last statement, the puzzle is drawn again from the same generator (so
the result stays a function of the seed). `solve` then checks the whole puzzle over all 2^n
assignments.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from envs.prompts import PromptStyle
from envs.splits import held_out_first
from rl.wire import Task

MIN_PEOPLE, MAX_PEOPLE = 3, 14
DISTRIBUTIONS: list[str] = [f"kk_{n}p" for n in range(MIN_PEOPLE, MAX_PEOPLE + 1)]
DEFAULT_DISTRIBUTIONS = DISTRIBUTIONS
NAME_PATTERN = re.compile(r"^kk_([1-9][0-9]*)p$")

DEFAULT_SYSTEM_PROMPT: str | None = (
    "You are a careful reasoner. First think the problem through inside <think> </think>, "
    "then state your final answer inside <answer> </answer>."
)
DEFAULT_INSTRUCTION = (
    "Work out the role of every inhabitant. Reason step by step inside <think> </think>, then give "
    "the final answer inside <answer> </answer> with one line per inhabitant, numbered in the order "
    "they were introduced, such as \"(1) Name is a knight\" or \"(2) Name is a knave\"."
)
# Logic-RL / DUMP scoring: format +1 / -1, answer +2 correct / -1.5 wrong / -2 unreadable.
DEFAULT_REWARDS: list[dict] = [{"name": "knights_knaves", "weight": 1.0}, {"name": "format", "weight": 1.0}]

# Distinct single capitalised words, so "\bName is a knight" in an answer can only mean that person.
NAMES: tuple[str, ...] = (
    "Zoey", "Oliver", "Ava", "Liam", "Mia", "Noah", "Emma", "Ethan", "Sofia", "Lucas",
    "Chloe", "Mason", "Aria", "Logan", "Isla", "Caleb", "Nora", "Wyatt", "Leah", "Owen",
    "Stella", "Hudson", "Violet", "Jasper", "Clara", "Felix", "Ruby", "Silas", "Hazel", "Milo",
    "Naomi", "Rowan", "Elena", "Tobias", "Iris", "Declan", "Maya", "Gideon", "Lydia", "Hugo",
    "Freya", "Elliot", "Wren", "Julian", "Thea", "Simon", "Nadia", "Victor", "Esther", "Kieran",
    "Priya", "Mateo", "Ingrid", "Rafael", "Yara", "Dmitri", "Keiko", "Omar", "Beatrix", "Anton",
    "Greta", "Tariq", "Lucia", "Bruno", "Sienna", "Arjun", "Helga", "Quentin", "Marisol", "Viktor",
)

ROLES = ("knight", "knave")
PAIR_OPS = ("same", "different")
# How often each kind of statement is proposed (before the greedy choice among candidates).
STATEMENT_KINDS = ("is", "not", "and", "or", "implies", "iff", "same", "different")
STATEMENT_WEIGHTS = (3, 2, 3, 3, 3, 3, 1.5, 1.5)
CANDIDATES_PER_PERSON = 4
MAX_DRAWS = 1000


@dataclass(frozen=True)
class Puzzle:
    """`statements[i]` is what `names[i]` says; `solution[i]` is True when `names[i]` is a knight."""

    names: tuple[str, ...]
    statements: tuple[dict, ...]
    solution: tuple[bool, ...]

    @property
    def n(self) -> int:
        return len(self.names)

    def key(self) -> str:
        """Identity for de-duplication: statements and roles, names ignored (so renamed copies count as one)."""
        return json.dumps([list(self.statements), [int(k) for k in self.solution]], sort_keys=True)


def parse_distribution(name: str) -> int:
    """`kk_5p` -> 5 (the number of inhabitants)."""
    match = NAME_PATTERN.match(name)
    n = int(match.group(1)) if match else None
    if n is None or not MIN_PEOPLE <= n <= MAX_PEOPLE:
        raise ValueError(
            f"unknown knights_knaves distribution {name!r}: use kk_<n>p with n from {MIN_PEOPLE} to "
            f"{MAX_PEOPLE} inhabitants ({DISTRIBUTIONS[0]} ... {DISTRIBUTIONS[-1]})"
        )
    return n


# ----------------------------------------------------------------------------------------------
# Semantics. An assignment is a bitmask: bit i set = inhabitant i is a knight. `evaluate` reads
# the roles through `rows[who]`, which is either a numpy bool array (inhabitant `who` is a knight,
# one entry per assignment; the result is a bool array) or a plain bool (the result is a bool).

def evaluate(tree: dict, rows: Any) -> Any:
    """Truth of a statement; `rows[i]` says whether inhabitant i is a knight (array or bool)."""
    op = tree["op"]
    if op == "is":
        row = rows[tree["who"]]
        return row if tree["role"] == "knight" else row ^ True
    if op == "not":
        return evaluate(tree["arg"], rows) ^ True
    if op in PAIR_OPS:
        i, j = tree["args"]
        return (rows[i] == rows[j]) if op == "same" else (rows[i] ^ rows[j])
    a, b = evaluate(tree["args"][0], rows), evaluate(tree["args"][1], rows)
    if op == "and":
        return a & b
    if op == "or":
        return a | b
    if op == "implies":
        return (a ^ True) | b
    if op == "iff":
        return a == b
    raise ValueError(f"unknown statement op {op!r}")


@cache
def _all_assignments(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every bitmask 0 .. 2^n-1 and its bits as an (n, 2^n) bool matrix (read-only, cached per n)."""
    masks = np.arange(1 << n, dtype=np.int64)
    bits = ((masks[None, :] >> np.arange(n, dtype=np.int64)[:, None]) & 1).astype(bool)
    masks.flags.writeable = bits.flags.writeable = False
    return masks, bits


class _Rows:
    """`rows[i]`: whether inhabitant i is a knight in each surviving assignment, computed when first asked."""

    __slots__ = ("_bits", "_cache", "_full", "masks")

    def __init__(self, n: int, masks: np.ndarray | None = None):
        full_masks, self._bits = _all_assignments(n)
        self._full = masks is None
        self.masks = full_masks if masks is None else masks
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, who: int) -> np.ndarray:
        row = self._cache.get(who)
        if row is None:
            row = self._bits[who] if self._full else self._bits[who].take(self.masks)
            self._cache[who] = row
        return row

    def keep(self, which: np.ndarray) -> _Rows:
        """The survivors where `which` is True."""
        rows = _Rows.__new__(_Rows)
        rows.masks, rows._bits, rows._full, rows._cache = self.masks[np.flatnonzero(which)], self._bits, False, {}
        return rows


def _consistent(rows: _Rows, speaker: int, tree: dict) -> np.ndarray:
    """Which assignments agree with `speaker` saying `tree`: the statement is true iff the speaker is a knight."""
    return rows[speaker] == evaluate(tree, rows)


def solve(n: int, statements: Sequence[dict]) -> list[tuple[bool, ...]]:
    """Every assignment (True = knight, per inhabitant) under which all statements are consistent, by mask order."""
    if len(statements) != n:
        raise ValueError(f"{n} inhabitants need {n} statements, got {len(statements)}")
    rows = _Rows(n)
    for speaker, tree in enumerate(statements):
        rows = rows.keep(_consistent(rows, speaker, tree))
    return [tuple(bool((int(mask) >> i) & 1) for i in range(n)) for mask in rows.masks]


# ----------------------------------------------------------------------------------------------
# Generation.

_TRUTH = {
    "and": lambda a, b: a and b,
    "or": lambda a, b: a or b,
    "implies": lambda a, b: (not a) or b,
    "iff": lambda a, b: a == b,
}


def _random_statement(n: int, solution: tuple[bool, ...], speaker: int, rng: random.Random) -> dict:
    """A random statement by `speaker` that is true under `solution` exactly when the speaker is a knight.

    The kind and the people are drawn first; the roles are then drawn uniformly among those that
    give the wanted truth value (there is always one, as the two people of a pair differ).
    """
    want = solution[speaker]
    kind = rng.choices(STATEMENT_KINDS, STATEMENT_WEIGHTS)[0]
    if kind in PAIR_OPS:
        i, j = rng.sample(range(n), 2)
        same = solution[i] == solution[j]
        return {"op": "same" if same == want else "different", "args": [i, j]}
    if kind in ("is", "not"):
        who = rng.randrange(n)
        literal_true = want if kind == "is" else not want
        literal = {"op": "is", "who": who, "role": "knight" if solution[who] == literal_true else "knave"}
        return literal if kind == "is" else {"op": "not", "arg": literal}
    i, j = rng.sample(range(n), 2)
    truth = _TRUTH[kind]
    options = [
        (role_i, role_j)
        for role_i in ROLES
        for role_j in ROLES
        if truth(solution[i] == (role_i == "knight"), solution[j] == (role_j == "knight")) == want
    ]
    role_i, role_j = rng.choice(options)
    return {"op": kind, "args": [{"op": "is", "who": i, "role": role_i}, {"op": "is", "who": j, "role": role_j}]}


def _draw_once(n: int, rng: random.Random) -> tuple[tuple[bool, ...], list[dict], np.ndarray]:
    """One attempt: hidden roles, statements, and the bitmasks of the assignments that survive them all."""
    solution = tuple(rng.random() < 0.5 for _ in range(n))
    statements: list[dict | None] = [None] * n
    survivors = _Rows(n)
    order = list(range(n))
    rng.shuffle(order)
    for speaker in order:
        best, best_keep, best_count = None, None, -1
        for _ in range(CANDIDATES_PER_PERSON):
            tree = _random_statement(n, solution, speaker, rng)
            keep = _consistent(survivors, speaker, tree)
            count = int(np.count_nonzero(keep))
            if best is None or count < best_count:
                best, best_keep, best_count = tree, keep, count
        statements[speaker] = best
        survivors = survivors.keep(best_keep)
    return solution, statements, survivors.masks


def generate_puzzle(n: int, rng: random.Random, names: Sequence[str] = NAMES) -> Puzzle:
    """A puzzle with `n` inhabitants and exactly one consistent assignment, drawn from `rng`."""
    if not MIN_PEOPLE <= n <= MAX_PEOPLE:
        raise ValueError(f"knights_knaves puzzles have {MIN_PEOPLE} to {MAX_PEOPLE} inhabitants, got {n}")
    for _ in range(MAX_DRAWS):
        solution, statements, survivors = _draw_once(n, rng)
        if len(survivors) != 1:
            continue
        solutions = solve(n, statements)
        if solutions != [solution]:  # cannot happen unless the incremental filter is wrong
            raise AssertionError(f"generated puzzle has solutions {solutions}, expected only {solution}")
        return Puzzle(names=tuple(rng.sample(list(names), n)), statements=tuple(statements), solution=solution)
    raise RuntimeError(f"no puzzle with a unique solution for n={n} after {MAX_DRAWS} draws")


# ----------------------------------------------------------------------------------------------
# Wording.

def _literal_text(tree: dict, speaker: int, names: Sequence[str]) -> str:
    if tree["who"] == speaker:
        return f"I am a {tree['role']}"
    return f"{names[tree['who']]} is a {tree['role']}"


def statement_text(tree: dict, speaker: int, names: Sequence[str]) -> str:
    """The statement as the speaker says it (first person for themselves), without quotes or final stop."""
    op = tree["op"]
    if op == "is":
        return _literal_text(tree, speaker, names)
    if op == "not":
        return f"It is not the case that {_literal_text(tree['arg'], speaker, names)}"
    if op in PAIR_OPS:
        i, j = tree["args"]
        if speaker in (i, j):
            pair = f"{names[j if i == speaker else i]} and I"
        else:
            pair = f"{names[i]} and {names[j]}"
        return f"{pair} are of the same kind" if op == "same" else f"{pair} are of different kinds"
    a, b = (_literal_text(arg, speaker, names) for arg in tree["args"])
    if op == "and":
        return f"{a} and {b}"
    if op == "or":
        return f"{a} or {b}"
    if op == "implies":
        return f"If {a}, then {b}"
    if op == "iff":
        return f"{a} if and only if {b}"
    raise ValueError(f"unknown statement op {op!r}")


def _name_list(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def question_text(puzzle: Puzzle) -> str:
    """Island rules, the inhabitants, one sentence per statement, and the question."""
    lines = [
        (
            "On an island, every inhabitant is either a knight or a knave. Knights always tell the truth, "
            "and knaves always lie. (A statement joined by \"or\" is true when at least one part is true; "
            "\"If A, then B\" is false only when A is true and B is false.)"
        ),
        f"You meet {puzzle.n} inhabitants: {_name_list(puzzle.names)}.",
    ]
    for speaker, tree in enumerate(puzzle.statements):
        lines.append(f"{puzzle.names[speaker]} says, \"{statement_text(tree, speaker, puzzle.names)}.\"")
    lines.append("Who is a knight and who is a knave?")
    return "\n".join(lines)


def answer_text(puzzle: Puzzle) -> str:
    """`(1) Zoey is a knight` ... one line per inhabitant, in order."""
    return "\n".join(
        f"({i + 1}) {name} is a {'knight' if knight else 'knave'}"
        for i, (name, knight) in enumerate(zip(puzzle.names, puzzle.solution))
    )


# ----------------------------------------------------------------------------------------------
# Splits.

def draw_puzzles(name: str, count: int, seed: int) -> list[Puzzle]:
    """`count` pairwise distinct puzzles (by `Puzzle.key`, names ignored), in a seeded order."""
    n = parse_distribution(name)
    rng = random.Random(f"{seed}-{name}")
    seen: set[str] = set()
    puzzles: list[Puzzle] = []
    attempts = 0
    while len(puzzles) < count:
        attempts += 1
        if attempts > 10 * count + 1000:
            raise ValueError(f"distribution {name} gave only {len(puzzles)} distinct puzzles; lower env.train_size")
        puzzle = generate_puzzle(n, rng)
        key = puzzle.key()
        if key not in seen:
            seen.add(key)
            puzzles.append(puzzle)
    return puzzles


def make_task(name: str, split: str, index: int, puzzle: Puzzle, style: PromptStyle) -> Task:
    return Task(
        task_id=f"{name}/{split}/{index}",
        distribution=name,
        messages=style.messages(question_text(puzzle)),
        answer=answer_text(puzzle),
        metadata={
            "solution": {n: ("knight" if k else "knave") for n, k in zip(puzzle.names, puzzle.solution)},
            "names": list(puzzle.names),
            "statements": [json.loads(json.dumps(tree)) for tree in puzzle.statements],
        },
    )


def build_splits(
    name: str, train_size: int, test_size: int, seed: int, style: PromptStyle, few_shot: int = 0,
) -> tuple[list[Task], list[Task]]:
    """Disjoint (train, test) task lists; test takes the first `test_size` puzzles of the draw.

    Puzzles are distinct by statements and roles (names ignored), so no test puzzle reappears in
    training, not even under other names. Few-shot demonstrations are not supported: there is
    no reference reasoning to show inside <think>.
    """
    if few_shot:
        raise ValueError("few_shot is not supported for knights_knaves")
    puzzles = draw_puzzles(name, train_size + test_size, seed)
    return held_out_first(puzzles, test_size, lambda split, i, puzzle: make_task(name, split, i, puzzle, style))
