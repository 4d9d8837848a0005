"""Recall-free ceilings: what a guesser that knows MQAR's format but binds no key to its value
scores on a given evaluation set (issue 30).

Chance over the whole value half of the vocabulary flatters every model that learned the format
and nothing else: the answer is always one of the sequence's own K context values, so guessing
among those scores 1/K, and a layout can leak more (the legacy layout wrote each value into the
input after its query, so "the most frequent context value not yet revealed" scored 0.39 at
(128, 8)). Each rule below answers a query from the context values, the positions and what the
input revealed before the query, never from the query key's identity; the ceiling is the best
rule's accuracy on the same batches the model is scored on. The rules are told where the queries
are (the scored positions), which a model has to infer: the ceilings are upper bounds for
guessers of their kind.

Rules (a query is a scored position; the context is the first 2K tokens):
- uniform: a uniform pick among the distinct context values (its expected accuracy);
- rank: the j-th query (in order of position) answered with the j-th context value: Zoology's
  power-law slot draw gives the first keys the likeliest (earliest) slots, so query order
  follows context order more often than by chance;
- first-unrevealed: the earliest context value not yet revealed (a revealed value is the token
  right after an earlier query);
- frequent-unrevealed: the context value seen most often before the query, revealed ones left
  out, ties to the earliest (the legacy layout's shortcut).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hubbench.quality.tasks import IGNORE, TaskBatch

# a rule: (context values in order, how often each distinct one occurred before the query,
# values revealed so far, the query's rank among the sequence's queries) -> the guessed token
Rule = Callable[[list[int], dict[int, int], set[int], int], "int | None"]


def _rank(values: list[int], seen: dict[int, int], revealed: set[int], j: int) -> int | None:
    return values[j] if j < len(values) else None


def _first_unrevealed(values: list[int], seen: dict[int, int], revealed: set[int], j: int) -> int:
    return next((v for v in values if v not in revealed), values[0])


def _frequent_unrevealed(
    values: list[int], seen: dict[int, int], revealed: set[int], j: int
) -> int:
    open_ = [v for v in dict.fromkeys(values) if v not in revealed] or values
    return max(open_, key=lambda v: seen[v])  # max keeps the first of equal counts


RULES: dict[str, Rule] = {
    "rank": _rank,
    "first-unrevealed": _first_unrevealed,
    "frequent-unrevealed": _frequent_unrevealed,
}


@dataclass(frozen=True)
class Ceilings:
    """Accuracies of the recall-free guessers on one evaluation set."""

    uniform: float  # expected accuracy of a uniform pick among the distinct context values
    rules: dict[str, float]  # every rule's accuracy
    queries: int

    @property
    def best_rule(self) -> str:
        """The rule with the highest accuracy (uniform included), ties in RULES order."""
        scores = {"uniform": self.uniform, **self.rules}
        return max(scores, key=lambda k: scores[k])

    @property
    def ceiling(self) -> float:
        return max(self.uniform, *self.rules.values())


def recall_free_ceilings(batches: Sequence[TaskBatch], kv_pairs: int) -> Ceilings:
    """Every rule's accuracy (and the uniform pick's expectation) over the scored positions of
    `batches`, whose first 2 kv_pairs tokens are the context k_1 v_1 ... k_K v_K."""
    hits = dict.fromkeys(RULES, 0)
    uniform, queries = 0.0, 0
    for b in batches:
        for tokens, targets in zip(b.inputs.tolist(), b.targets.tolist(), strict=True):
            values = tokens[1 : 2 * kv_pairs : 2]
            seen = dict.fromkeys(values, 0)  # occurrences before the current position
            revealed: set[int] = set()
            j = 0
            for pos, (token, want) in enumerate(zip(tokens, targets, strict=True)):
                if want != IGNORE:
                    uniform += (want in seen) / len(seen)
                    for name, rule in RULES.items():
                        hits[name] += rule(values, seen, revealed, j) == want
                    if pos + 1 < len(tokens) and tokens[pos + 1] in seen:
                        revealed.add(tokens[pos + 1])
                    j += 1
                if token in seen:
                    seen[token] += 1
            queries += j
    if not queries:
        return Ceilings(0.0, dict.fromkeys(RULES, 0.0), 0)
    return Ceilings(uniform / queries, {k: v / queries for k, v in hits.items()}, queries)
