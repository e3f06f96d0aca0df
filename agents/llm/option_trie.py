"""An option set's tokens as a trie, to score every option of a choice in one forward pass.

Options that share a prefix ("ANSWER: 1." of every grid price) share its nodes, so each token is
fed once; a node sees the prompt, its ancestors and itself (a tree attention mask). The last token
of each option is never fed: it is only predicted, by its parent's logits. With node q's logits
giving log P(token | prompt, path to q), an option's score is the sum over its tokens
log P(t_0 | prompt) + sum_j log P(t_{j+1} | prompt, t_0..t_j).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OptionTrie:
    """One option set's tokens but each option's last, as a trie (numpy arrays):
    tokens[n], depth[n] of its nodes (parents before children); sees[n, n], a node's ancestors
    and itself; first[K], each option's token 0; step_node/step_token[K, S], for each option
    the node whose logits predict its token j + 1 and that token (step_used marks real steps)."""

    tokens: np.ndarray
    depth: np.ndarray
    sees: np.ndarray
    first: np.ndarray
    step_node: np.ndarray
    step_token: np.ndarray
    step_used: np.ndarray

    @classmethod
    def of(cls, options: Sequence[Sequence[int]]) -> OptionTrie:
        nodes, paths = trie_nodes([list(o) for o in options])
        n, longest = len(nodes), max((len(p) for p in paths), default=0)
        parent = np.array([p for p, _, _ in nodes], dtype=np.int64)
        sees = np.zeros((n, n), dtype=bool)
        for q in range(n):                                           # parents come first
            if parent[q] >= 0:
                sees[q] = sees[parent[q]]
            sees[q, q] = True
        step_node = np.zeros((len(options), longest), dtype=np.int64)
        step_token = np.zeros((len(options), longest), dtype=np.int64)
        step_used = np.zeros((len(options), longest), dtype=bool)
        for k, (seq, path) in enumerate(zip(options, paths)):
            step_node[k, :len(path)] = path
            step_token[k, :len(path)] = seq[1:len(path) + 1]
            step_used[k, :len(path)] = True
        return cls(np.array([t for _, t, _ in nodes], dtype=np.int64),
                   np.array([d for _, _, d in nodes], dtype=np.int64), sees,
                   np.array([o[0] for o in options], dtype=np.int64), step_node, step_token, step_used)


@dataclass
class TrieBatch:
    """The tries of a batch's rows padded to one width (nodes), option count and step count; rows
    with the same trie (the usual case: every firm has the same price grid) are filled at once."""

    tries: list[OptionTrie]
    width: int
    options: int
    steps: int

    @classmethod
    def of(cls, tries: list[OptionTrie]) -> TrieBatch:
        return cls(tries, max(len(t.tokens) for t in tries), max(len(t.first) for t in tries),
                   max(t.step_node.shape[1] for t in tries))

    def arrays(self) -> dict[str, np.ndarray]:
        rows, w, k, s = len(self.tries), self.width, self.options, self.steps
        out = {"tokens": np.zeros((rows, w), np.int64), "depth": np.zeros((rows, w), np.int64),
               "sees": np.zeros((rows, w, w), bool), "first": np.zeros((rows, k), np.int64),
               "step_node": np.zeros((rows, k, s), np.int64), "step_token": np.zeros((rows, k, s), np.int64),
               "step_used": np.zeros((rows, k, s), bool)}
        same: dict[int, list[int]] = {}
        for row, trie in enumerate(self.tries):
            same.setdefault(id(trie), []).append(row)
        for rows_of in same.values():
            t, at = self.tries[rows_of[0]], np.array(rows_of)
            n, kk, ss = len(t.tokens), len(t.first), t.step_node.shape[1]
            out["tokens"][at, :n], out["depth"][at, :n], out["sees"][at, :n, :n] = t.tokens, t.depth, t.sees
            out["first"][at, :kk] = t.first
            for name in ("step_node", "step_token", "step_used"):
                out[name][at, :kk, :ss] = getattr(t, name)
        return out


def trie_nodes(options: list[list[int]]) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
    """The options' tokens but each one's last, as a trie: nodes (parent node or -1, token,
    depth), parents before children, and per option the nodes of its tokens 0..len-2 (node j's
    logits predict the option's token j + 1)."""
    nodes: list[tuple[int, int, int]] = []
    index: dict[tuple[int, ...], int] = {}
    paths = []
    for seq in options:
        path, parent = [], -1
        for j, token in enumerate(seq[:-1]):
            key = tuple(seq[:j + 1])
            if key not in index:
                index[key] = len(nodes)
                nodes.append((parent, token, j))
            parent = index[key]
            path.append(parent)
        paths.append(path)
    return nodes, paths
