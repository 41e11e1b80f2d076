"""Exact top-K search by inner product over L2-normalised embeddings (cosine), in bounded memory.

Queries go in blocks against gallery blocks. A block's scores come from one matrix product (fp32 on CPU through
numpy's BLAS, which runs faster than torch's here; on CUDA fp32, fp16 or bf16 through torch); only entries that can
still enter a query's top K are kept as candidates: at or above the query's current K-th best score minus a
margin that bounds the product's rounding error. Candidates are re-scored exactly (float64 dot products of the
stored fp32 vectors, on the host, then rounded to float32 as stored) and merged into a running top K ordered by
that score, then by gallery id: deterministic, and the same answer whatever the precision, block sizes, device or
sharding.

On CUDA the filter is not run per block (each would wait for the device): a running approximate top (K + extra)
per query stays on the device, and a query whose kept extra entries prove its top K complete is re-scored from
them; the others (near-duplicates crowding the margin) take the filtered path.

The margin is a proof, not a tolerance: for unit vectors q and g, a product whose inputs are rounded with unit
roundoff u and whose output is rounded with u again differs from the exact q.g by at most 3u + d 2^-23 (the last
term the float32 accumulation over d terms), since sum |q_i g_i| <= |q||g| = 1; rounding the exact score to float32
moves it by at most 2^-24 more. A vector within that margin of the threshold is always re-scored, so no true top-K
member is lost.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ops.io.errors import SearchError
from ops.matching.vectors import normalise
from ops.models.device import best_device

UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
CHUNK = 64  # scores per run whose maximum is taken in the candidate filter; gallery blocks are a multiple of it
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Approximate candidates kept beyond K on the device, so that the top K is proven complete: more than the vectors
# that fall within twice the margin of the K-th best. Measured on 1M random unit vectors of 128 dimensions, K = 10:
# at most 65 (median 35) with bf16's margin, 17 with fp16's; with fewer kept, 30% of bf16 queries fell back.
EXTRA = {"fp32": 16, "fp16": 32, "bf16": 128}


def _top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` entries of each row (values, columns), in two cheap steps instead of a selection over the
    whole row: the maximum of each run of CHUNK columns, the ``k`` runs with the highest maxima (they hold the
    row's top ``k``: a run outside them has ``k`` better maxima above its own), then a selection among those
    runs' columns only."""
    rows, width = scores.shape
    runs = -(-width // CHUNK)
    if runs * CHUNK != width:
        scores = torch.nn.functional.pad(scores, (0, runs * CHUNK - width), value=-torch.inf)
    chosen = scores.view(rows, runs, CHUNK).amax(dim=2).topk(min(k, runs), dim=1).indices
    columns = (chosen[:, :, None] * CHUNK + torch.arange(CHUNK, device=scores.device)).view(rows, -1)
    values, pos = scores.gather(1, columns).topk(k, dim=1)
    return values, columns.gather(1, pos)


@dataclass
class TopK:
    """For each query, its best K gallery ids (-1 pads when the gallery is smaller) and exact scores, best first."""

    scores: np.ndarray  # (Q, K) float64, -inf where padded
    ids: np.ndarray  # (Q, K) int64

    def __len__(self) -> int:
        return len(self.ids)


def merge(parts: list[TopK], k: int) -> TopK:
    """Merge top-K lists of the same queries (from gallery shards): best K by score, ties by lower id."""
    scores = np.concatenate([p.scores for p in parts], axis=1)
    ids = np.concatenate([p.ids for p in parts], axis=1)
    # lexsort sorts by the last key first: score descending, then id ascending; padding (-inf, -1) sinks last.
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
    return TopK(np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1))


class ExactSearch:
    """A gallery held on one device; ``search(queries, k)`` -> exact ``TopK`` with ids ``ids[j]`` of gallery row j."""

    def __init__(
        self,
        gallery: np.ndarray,
        ids: np.ndarray | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        gallery_block: int | None = None,
        query_block: int | None = None,
        backend: str | None = None,
    ) -> None:
        if precision not in UNIT_ROUNDOFF:
            raise SearchError(f"precision {precision!r}: use one of {', '.join(UNIT_ROUNDOFF)}")
        self.gallery = normalise(gallery)
        self.ids = np.arange(len(self.gallery), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        if len(self.ids) != len(self.gallery):
            raise SearchError(f"{len(self.ids)} ids for {len(self.gallery)} gallery vectors")
        self.dim = self.gallery.shape[1]
        self.device = best_device(device)
        if self.device.type == "cpu" and precision != "fp32":
            raise SearchError(f"{precision} products are for CUDA; on CPU the engine works in fp32")
        self.precision = precision
        # and 2^-24 more: exact scores are ranked as stored, rounded to float32 (see _exact)
        self.margin = 3.0 * UNIT_ROUNDOFF[precision] + self.dim * 2.0**-23 + 2.0**-24
        gallery_block = gallery_block or (65536 if self.device.type == "cuda" else 4096)
        query_block = query_block or (4096 if self.device.type == "cuda" else 512)
        if gallery_block % CHUNK or gallery_block < CHUNK:
            raise SearchError(f"gallery_block must be a multiple of {CHUNK}")
        self.gallery_block, self.query_block = gallery_block, query_block
        # numpy's BLAS on CPU; torch on CUDA (or on CPU when asked, which is how the CUDA code path is tested here)
        self.backend = backend or ("torch" if self.device.type == "cuda" else "numpy")
        if self.backend not in ("numpy", "torch") or (self.backend == "numpy" and self.device.type != "cpu"):
            raise SearchError(f"backend {self.backend!r} on {self.device.type}: use numpy on CPU or torch")
        if self.backend == "torch":  # stays in device memory across query batches
            self.device_gallery = torch.from_numpy(self.gallery).to(self.device, DTYPES[precision])

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, queries: np.ndarray, k: int) -> TopK:
        queries = normalise(queries)
        if queries.shape[1] != self.dim:
            raise SearchError(f"queries have {queries.shape[1]} dimensions, the gallery {self.dim}")
        if k < 1:
            raise SearchError(f"k must be at least 1, not {k}")
        step = self.query_block
        blocks = [queries[i : i + step] for i in range(0, len(queries), step)]
        if self.backend == "torch":
            parts = [self._block_torch(b, k) for b in blocks]
        else:
            parts = self._parallel(blocks, k)
        if not parts:
            return TopK(np.zeros((0, k)), np.zeros((0, k), np.int64))
        return TopK(np.concatenate([p.scores for p in parts]), np.concatenate([p.ids for p in parts]))

    def _parallel(self, blocks: list[np.ndarray], k: int) -> list[TopK]:
        """On CPU, one query block per core at a time, each with single-threaded BLAS and filter: the way the
        cores are shared that measured fastest here (a multi-threaded BLAS with the filter between its calls lost
        a fifth to hand-offs). numpy and torch release the GIL in the heavy parts."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1, "blas"), ThreadPoolExecutor(max(1, min(threads, len(blocks)))) as pool:
                return list(pool.map(lambda b: self._block(b, k), blocks))
        finally:
            torch.set_num_threads(threads)

    def _block_torch(self, q: np.ndarray, k: int) -> TopK:
        """The device's way: a running approximate top (K + extra) per query stays on the device across gallery
        blocks (no transfer or synchronisation per block), then one copy to the host, where the candidates are
        re-scored exactly. The extra entries prove the answer complete: when the last kept approximate score lies
        more than twice the margin below the K-th, every vector left out scores exactly below K kept ones. A query
        without that proof (many vectors within the margin of its K-th best: near-duplicates) goes through the
        filtered path, which keeps every candidate above its threshold."""
        size = len(self.gallery)
        keep = min(size, k + EXTRA[self.precision])
        q_dev = torch.from_numpy(q).to(self.device, DTYPES[self.precision])
        best_v = best_c = None
        for start in range(0, size, self.gallery_block):
            stop = min(start + self.gallery_block, size)
            v, c = _top(q_dev @ self.device_gallery[start:stop].T, min(keep, stop - start))
            if best_v is not None:
                v, pos = torch.cat([best_v, v], 1).topk(keep, dim=1)
                c = torch.cat([best_c, c + start], 1).gather(1, pos)
            else:
                c = c + start
            best_v, best_c = v, c
        approx, cols = best_v.float().cpu().numpy(), best_c.cpu().numpy()
        best_s, ids = self._rescore(q, approx, cols, k)
        proven = approx[:, -1] < approx[:, min(k, keep) - 1] - 2 * self.margin
        unproven = np.flatnonzero(~proven) if keep < size else np.zeros(0, np.int64)
        if len(unproven):
            again = self._block(q[unproven], k)
            best_s[unproven], ids[unproven] = again.scores, again.ids
        return TopK(best_s, ids)

    def _rescore(self, q: np.ndarray, approx: np.ndarray, cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's top K from its approximate candidates (Q, C): only those within twice the margin of its
        approximate K-th best can be in its exact top K, and only they are re-scored (a third of them with bf16's
        margin), a few hundred queries at a time so that the float64 copies stay small."""
        nq = len(q)
        kth = approx[:, min(k, approx.shape[1]) - 1]
        scores, best = np.full((nq, k), -np.inf), np.full((nq, k), -1, np.int64)
        step = 512
        for a in range(0, nq, step):
            rows, j = np.nonzero(approx[a : a + step] >= kth[a : a + step, None] - 2 * self.margin)
            part = slice(a, a + step)
            scores[part], best[part] = self._merge(q[part], rows, cols[part][rows, j], scores[part], best[part], k)
        return scores, np.where(best >= 0, self.ids[np.maximum(best, 0)], -1)

    def _block(self, q: np.ndarray, k: int) -> TopK:
        nq = len(q)
        buffer = np.empty((nq, self.gallery_block), np.float32) if self.backend == "numpy" else None
        best_s = np.full((nq, k), -np.inf)
        best_i = np.full((nq, k), -1, np.int64)
        threshold = np.full(nq, -np.inf)
        q_dev = torch.from_numpy(q).to(self.device, DTYPES[self.precision]) if self.backend == "torch" else None
        rows_buf, cols_buf, pending = [], [], 0
        for start in range(0, len(self.gallery), self.gallery_block):
            stop = min(start + self.gallery_block, len(self.gallery))
            if q_dev is not None:
                scores = (q_dev @ self.device_gallery[start:stop].T).float()
                rows, cols = self._candidates_torch(scores, threshold, k)
            else:
                scores = self._scores_cpu(q, start, stop, buffer)
                rows, cols = self._candidates_numpy(scores, threshold, k)
            real = cols < stop - start  # never the -inf padding of a short last block
            rows_buf.append(rows[real])
            cols_buf.append(cols[real] + start)
            pending += int(real.sum())
            # Merge when the candidates outnumber the current lists, so the threshold keeps rising.
            if pending >= nq * k or stop == len(self.gallery):
                best_s, best_i = self._merge(q, np.concatenate(rows_buf), np.concatenate(cols_buf), best_s, best_i, k)
                threshold = best_s[:, -1] - self.margin  # -inf until a query has K candidates
                rows_buf, cols_buf, pending = [], [], 0
        ids = np.where(best_i >= 0, self.ids[np.maximum(best_i, 0)], -1)
        return TopK(best_s, ids)

    def _scores_cpu(self, q: np.ndarray, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
        """(len(q), gallery_block) scores from numpy's BLAS into the block's buffer; columns past the gallery -inf."""
        width = stop - start
        if width == self.gallery_block:
            np.matmul(q, self.gallery[start:stop].T, out=buffer)
        else:
            buffer[:, :width] = q @ self.gallery[start:stop].T
            buffer[:, width:] = -np.inf
        return buffer

    def _candidates_numpy(self, scores: np.ndarray, threshold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Entries at or above their row's threshold. One pass takes the maximum over CHUNK strided runs of each
        row; only runs whose maximum clears the threshold
        are looked into, and after the first blocks almost none do."""
        fresh = np.isinf(threshold)
        if fresh.any():  # queries without K candidates yet: this block's K-th best bounds what can matter
            threshold = threshold.copy()
            threshold[fresh] = np.partition(scores[fresh], -k, axis=1)[:, -k] - 2 * self.margin
        nq = len(scores)
        runs = scores.reshape(nq, CHUNK, -1)  # run j of a row: columns j, j + W, j + 2W, ... (W = block / CHUNK)
        peaks = torch.from_numpy(runs).amax(dim=1).numpy()
        r, j = np.nonzero(peaks >= threshold[:, None])
        if len(r) == 0:
            return r, j
        rr, i = np.nonzero(runs[r, :, j] >= threshold[r, None])
        return r[rr], i * runs.shape[2] + j[rr]

    def _candidates_torch(self, scores: torch.Tensor, threshold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        t = torch.from_numpy(threshold).to(self.device, torch.float32)
        fresh = torch.isinf(t)
        if fresh.any():
            kk = min(k, scores.shape[1])
            t[fresh] = scores[fresh].topk(kk, dim=1).values[:, -1] - 2 * self.margin
        r, c = torch.nonzero(scores >= t[:, None], as_tuple=True)
        return r.cpu().numpy(), c.cpu().numpy()

    def _exact(self, q: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        # On the host whatever the device: one summation order, so every path gives bit-identical scores. Rounded
        # to float32, the precision rows store them in: lists are ranked by the score a reader sees (then by id),
        # so that lists merged from stored rows (jobs.archive.search_diff) and any cut of the gallery rank the same.
        exact = np.einsum("ij,ij->i", q[rows].astype(np.float64), self.gallery[cols].astype(np.float64))
        return exact.astype(np.float32).astype(np.float64)

    def _merge(self, q, rows, cols, best_s, best_i, k) -> tuple[np.ndarray, np.ndarray]:
        """The running lists of the queries that have candidates, merged with their exact scores."""
        if len(rows) == 0:
            return best_s, best_i
        exact = self._exact(q, rows, cols)
        touched = np.unique(rows)
        local = np.searchsorted(touched, rows)
        n = len(touched)
        all_rows = np.concatenate([np.repeat(np.arange(n), k), local])
        all_cols = np.concatenate([best_i[touched].ravel(), cols])
        all_s = np.concatenate([best_s[touched].ravel(), exact])
        keep = all_cols >= 0
        all_rows, all_cols, all_s = all_rows[keep], all_cols[keep], all_s[keep]
        order = np.lexsort((self.ids[all_cols], -all_s, all_rows))  # by row, score descending, then id
        all_rows, all_cols, all_s = all_rows[order], all_cols[order], all_s[order]
        rank = np.arange(len(all_rows)) - np.searchsorted(all_rows, np.arange(n))[all_rows]
        sel = rank < k
        new_s, new_i = np.full((n, k), -np.inf), np.full((n, k), -1, np.int64)
        new_s[all_rows[sel], rank[sel]] = all_s[sel]
        new_i[all_rows[sel], rank[sel]] = all_cols[sel]
        best_s[touched], best_i[touched] = new_s, new_i
        return best_s, best_i
