"""The evolutionary search of OptEmbed over per-field embedding dimensions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Candidate = tuple[int, ...]


@dataclass
class EvolutionConfig:
    """Settings of the search (Lyu et al. 2022, Algorithm 1).

    Args:
        population: random candidates of the first generation.
        parents: the best candidates kept as parents of the next generation (top-k).
        mutations: children per generation made by mutating a parent.
        crossovers: children per generation made by crossing two parents.
        mutation_prob: chance that a mutation redraws a field's dimension.
        generations: generations after the first.
    """

    population: int = 20
    parents: int = 10
    mutations: int = 10
    crossovers: int = 10
    mutation_prob: float = 0.1
    generations: int = 10


@dataclass
class SearchResult:
    """Best candidate, its score, and every candidate scored (in order)."""

    best: Candidate
    score: float
    history: list[tuple[Candidate, float]]


class EvolutionarySearch:
    """Searches dims d_f ∈ [1, max_dim] per field, maximising ``score`` under ``cost`` ≤ ``limit``.

    Candidates over the limit are repaired by lowering dims of random fields (weighted by
    the bytes each field costs per dimension) until they fit; a candidate is scored once.

    Args:
        fields: number of fields; max_dim: largest dimension (D).
        score: candidate → validation AUC (higher is better).
        cost: candidate → bytes; limit: the budget in bytes (None = unconstrained).
        field_weights: bytes one more dimension of each field costs (for the repair).
        rng: random generator; progress: show a progress bar.
    """

    def __init__(
        self,
        fields: int,
        max_dim: int,
        score: Callable[[Candidate], float],
        cost: Callable[[Candidate], int],
        limit: float | None,
        field_weights: np.ndarray,
        rng: np.random.Generator,
        progress: bool = False,
    ):
        self.fields, self.max_dim = fields, max_dim
        self.score, self.cost, self.limit = score, cost, limit
        self.field_weights = np.asarray(field_weights, dtype=np.float64)
        self.rng, self.progress = rng, progress
        self.scores: dict[Candidate, float] = {}

    def run(self, config: EvolutionConfig) -> SearchResult:
        taken: set[Candidate] = set()
        population = [
            self._fresh(lambda: self.repair(self.rng.integers(1, self.max_dim + 1, self.fields)), taken)
            for _ in range(config.population)
        ]
        bar = tqdm(total=config.generations + 1, desc="evolutionary search", disable=not self.progress, leave=False)
        self._evaluate(population)
        bar.update()
        for generation in range(config.generations):
            parents = self._best(config.parents)
            children = [self._fresh(lambda: self._mutate(parents, config.mutation_prob), taken) for _ in range(config.mutations)]
            children += [self._fresh(lambda: self._cross(parents), taken) for _ in range(config.crossovers)]
            self._evaluate(children)
            bar.update()
            best = self._best(1)[0]
            log.info("search generation %d: best valid auc %.5f with dims %s", generation + 1, self.scores[best], list(best))
        bar.close()
        best = self._best(1)[0]
        return SearchResult(best, self.scores[best], list(self.scores.items()))

    def fits(self, candidate: Candidate) -> bool:
        return self.limit is None or self.cost(candidate) <= self.limit

    def repair(self, dims: np.ndarray) -> Candidate:
        """Lowers dims of random fields until the candidate fits the budget."""
        dims = np.array(dims, dtype=np.int64)
        while not self.fits(tuple(int(d) for d in dims)):
            weights = self.field_weights * (dims > 1)
            if weights.sum() == 0:
                break
            dims[self.rng.choice(self.fields, p=weights / weights.sum())] -= 1
        return tuple(int(d) for d in dims)

    def _fresh(self, make: Callable[[], Candidate], taken: set[Candidate]) -> Candidate:
        """A candidate from ``make`` that was not drawn before, redrawn up to 32 times (a
        mutation that redraws no field, or a crossover of equal parents, repeats its parent)."""
        for _ in range(32):
            candidate = make()
            if candidate not in taken:
                break
        taken.add(candidate)
        return candidate

    def _evaluate(self, candidates: list[Candidate]) -> None:
        for candidate in candidates:
            if candidate not in self.scores and self.fits(candidate):
                self.scores[candidate] = self.score(candidate)

    def _best(self, count: int) -> list[Candidate]:
        return sorted(self.scores, key=self.scores.__getitem__, reverse=True)[:count]

    def _mutate(self, parents: list[Candidate], prob: float) -> Candidate:
        parent = np.array(parents[self.rng.integers(len(parents))])
        redraw = self.rng.random(self.fields) < prob
        parent[redraw] = self.rng.integers(1, self.max_dim + 1, int(redraw.sum()))
        return self.repair(parent)

    def _cross(self, parents: list[Candidate]) -> Candidate:
        first, second = (np.array(parents[i]) for i in self.rng.integers(len(parents), size=2))
        return self.repair(np.where(self.rng.random(self.fields) < 0.5, first, second))
