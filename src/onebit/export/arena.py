"""The activation arena of an exported C program: every tensor's slot and each slot's byte offset in
float, integer (int16) and 8-bit mode, planned like tflite-micro's memory planner (live ranges, first fit), with the
bare-metal options of letting an output overwrite the rows of its dying input and, in 8-bit mode, of streaming
each residual block row by row (one thread per image)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from onebit.export.c_contract import SLOT_ALIGN
from onebit.export.c_program import ConvStep, Program
from onebit.export.int8 import byte_tensors

ALIGN = SLOT_ALIGN          # arena slot offsets (c_contract)


@dataclass
class SlotPlan:
    """Arena layout: every tensor's slot, and each slot's byte offset in float, int16 and 8-bit mode."""

    slot_of: dict[str, int]
    offsets_f: list[int]
    offsets_i: list[int]
    total_f: int
    total_i: int
    head_slot: int
    overlap: bool = False        # outputs may overwrite rows of their dying input (single-threaded only)
    offsets_8: list[int] | None = None   # 8-bit mode: convolution inputs are bytes, R tensors int16
    total_8: int = 0
    stream8: bool = False        # 8-bit mode streams each block row by row: A and T slots hold a few rows


class _NoFit(Exception):
    pass


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def lag_bytes(step: ConvStep, out_row: int, in_row: int) -> int:
    """How far below its input an output may start when it overwrites the input's consumed rows.

    Rows are computed in order (all 32-channel blocks of a row, then the next row); the pixels of
    output row oy (padded row oy + 1) are written while output row oy still reads padded input rows
    from oy * stride - pad + 1 on, so the output's padded rows up to oy + 1 must end at or below that
    input row: ``out_base + (oy + 2) * out_row <= in_base + (oy * stride - pad + 1) * in_row``; the
    zero bottom border row (oh + 1) is written per block, before the next block reads the last rows.
    """
    return _lag(step.out_hw[0], [oy * step.stride - step.pad + 1 for oy in range(step.out_hw[0])],
                out_row, in_row)


def pool_lag_bytes(step: ConvStep, out_row: int, in_row: int) -> int:
    """:func:`lag_bytes` for a streamed pool block (R over the R_prev it pools, 3 x 3, stride 2): output row
    oy still reads R_prev's padded rows from ``2 oy - res_pad + 1`` on (every other read of R_prev, the A
    rows, is further down and happened already or comes later, above)."""
    return _lag(step.out_hw[0], [2 * oy - step.res_pad + 1 for oy in range(step.out_hw[0])], out_row, in_row)


def _lag(oh: int, first: list[int], out_row: int, in_row: int) -> int:
    lag = max((oy + 2) * out_row - first[oy] * in_row for oy in range(oh))
    # the bottom border row (padded row oh + 1) is zeroed per block, while later blocks still read
    # the last row's inputs
    return max(lag, (oh + 2) * out_row - first[-1] * in_row)


class _Arena:
    """Offsets of live tensors: first fit from offset 0 up (``top`` None) or highest fit below ``top``
    (raises _NoFit); a tensor may be offered the rows of a dying one first (``lag_src``, ``lag``)."""

    def __init__(self, top: int | None):
        self.top = top
        self.off: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.live: set[str] = set()

    def place(self, t: str, nbytes: int, lag_src: str | None = None, lag: int = 0) -> None:
        off, size, live, top = self.off, self.size, self.live, self.top
        size[t] = nbytes
        need = _up(nbytes)
        if top is None:
            cands = sorted({0, *(_up(off[u] + size[u]) for u in live)})
        else:
            cands = sorted({top - need, *((off[u] - need) // ALIGN * ALIGN for u in live)}, reverse=True)
        if lag_src is not None and off[lag_src] - lag >= 0:
            cands.insert(0, (off[lag_src] - lag) // ALIGN * ALIGN)
        for c in cands:
            if c < 0 or (top is not None and c + need > top):
                continue
            clash = [u for u in live if c < off[u] + size[u] and off[u] < c + need]
            if all(u == lag_src and c <= off[u] - lag for u in clash):
                off[t] = c
                break
        else:
            raise _NoFit
        live.add(t)

    def alias(self, t: str, u: str) -> None:
        """``t`` written in place over ``u`` (an identity block's R)."""
        self.off[t], self.size[t] = self.off[u], self.size[u]
        self.live.add(t)

    def result(self) -> tuple[dict[str, int], int]:
        return self.off, _up(max(self.off[t] + self.size[t] for t in self.off))


def _smallest(layout: Callable[[int | None], tuple[dict[str, int], int]]) -> tuple[dict[str, int], int]:
    """The smaller of first fit and the smallest arena highest fit manages (bisection on its size)."""
    plan = layout(None)
    lo, hi = 0, plan[1]
    while hi - lo > ALIGN:
        mid = (lo + hi) // 2 // ALIGN * ALIGN
        try:
            got = layout(mid)
            plan, hi = (got, got[1]) if got[1] < plan[1] else (plan, mid)
        except _NoFit:
            lo = mid
    return plan


def streamable(prog: Program) -> bool:
    """Whether the 8-bit mode can stream ``prog``: stem, then (conv1 'act', conv2 'res' with an identity or pool
    shortcut) per block with every block's input R stored, then a 1 x 1 stride-1 head."""
    s = prog.steps
    if len(s) < 4 or len(s) % 2 or s[0].epilogue != "res" or s[-1].epilogue != "head":
        return False
    head = s[-1]
    if (head.k, head.stride, head.pad) != (1, 1, 0):
        return False
    for b in range((len(s) - 2) // 2):
        prod, c1, c2 = s[2 * b], s[2 * b + 1], s[2 * b + 2]
        if (c1.epilogue, c2.epilogue) != ("act", "res") or not prod.out or c1.src != prod.act_out \
                or c2.src != c1.out or c2.res not in ("identity", "pool") or c2.res_src != prod.out:
            return False
    return head.src == s[-2].act_out


def stream_rows(prog: Program) -> dict[str, int]:
    """Rows a streamed 8-bit plan keeps of each byte tensor: a block's A and T, k rows of the padded
    tensor for the convolution reading them (the head's A: 1)."""
    return {st.src: st.k for st in prog.steps[1:]}


def _stream_layout(prog: Program, top: int | None) -> tuple[dict[str, int], int]:
    """The 8-bit arena when every block runs row by row (onebit.c, ``ONEBIT_STREAM8``): for each output row of
    conv2, the T rows it needs are computed first, each from the A rows it needs, each A row from the stored
    R of the block before (A = act(R)); so only ``k`` padded rows of A and of T are kept (the head's A: the
    current row), while R stays whole (the shortcut reads it). The stem's R overwrites the consumed input rows
    (:func:`lag_bytes`), an identity block's R is written in place, a pool block's R starts
    :func:`pool_lag_bytes` below the R it pools and overwrites its consumed rows."""
    rows = stream_rows(prog)

    def nbytes(t: str, esz: int, keep: int | None = None) -> tuple[int, int]:
        c, h, w = prog.tensors[t]
        row = (w + 2) * c * esz
        return (keep if keep is not None else h + 2) * row, row

    a = _Arena(top)
    stem = prog.steps[0]
    x, x_row = nbytes("x", 1)
    r0, r0_row = nbytes(stem.out, 2)
    a.place("x", x)
    a.place(stem.out, r0, "x", lag_bytes(stem, r0_row, x_row))
    a.live.discard("x")
    steps = prog.steps
    for b in range((len(steps) - 2) // 2):
        c1, c2 = steps[2 * b + 1], steps[2 * b + 2]
        r_prev = steps[2 * b].out
        if c2.out and c2.res == "identity":
            a.alias(c2.out, r_prev)
        elif c2.out:
            r, r_row = nbytes(c2.out, 2)
            a.place(c2.out, r, r_prev, pool_lag_bytes(c2, r_row, nbytes(r_prev, 2)[1]))
        for t in (c1.src, c1.out):
            a.place(t, nbytes(t, 1, rows[t])[0])
        if not c2.out:                                    # the last block runs the head on each row
            a.place(c2.act_out, nbytes(c2.act_out, 1, rows[c2.act_out])[0])
            head = steps[-1]
            a.place("@head", head.out_hw[0] * head.out_hw[1] * prog.num_classes * 4)
        a.live -= {c1.src, c1.out, r_prev}              # R_prev: read by this block only (in place: as c2.out)
    return a.result()


def plan_slots(prog: Program, overlap: bool = False) -> SlotPlan:
    """Place every tensor in the arena by liveness (first fit by offset), in float, int16 and 8-bit mode
    (element sizes 4, 2, and 1 for convolution inputs / 2 for the residual stream).

    Tensors are NHWC with a one-pixel zero border; a tensor lives from the step that writes it to the
    last step that reads it. An identity-shortcut block writes its output R over its input R (each
    element is read before it is written). With ``overlap`` (single-threaded runs, rows in order), the
    activation a step writes may also start below the step's conv input by :func:`lag_bytes` and
    overwrite the input rows already consumed, when that input dies at the step; and the 8-bit mode streams
    each block row by row where the program allows it (:func:`_stream_layout`, ``stream8``).
    """
    last_use: dict[str, int] = {}
    for i, step in enumerate(prog.steps):
        for t in (step.src, step.res_src):
            if t:
                last_use[t] = i

    def layout(esz_of, top: int | None, lagged: bool) -> tuple[dict[str, int], int]:
        """Layer at a time, first fit (top None) or highest fit below ``top``; with ``lagged``, a dying
        input's rows are offered to the step's output first."""
        a = _Arena(top)

        def nbytes(t: str) -> int:
            c, h, w = prog.tensors[t]
            return (h + 2) * (w + 2) * c * esz_of(t)

        def place_output(t: str, i: int, step: ConvStep) -> None:
            if lagged and last_use.get(step.src) == i and step.src != step.res_src:
                c, _, w = prog.tensors[t]
                ci, _, wi = prog.tensors[step.src]
                a.place(t, nbytes(t), step.src,
                        lag_bytes(step, (w + 2) * c * esz_of(t), (wi + 2) * ci * esz_of(step.src)))
            else:
                a.place(t, nbytes(t))

        a.place("x", nbytes("x"))
        for i, step in enumerate(prog.steps):
            if step.epilogue == "head":
                a.place("@head", step.out_hw[0] * step.out_hw[1] * prog.num_classes * 4)
                continue
            if step.epilogue == "act":
                place_output(step.out, i, step)
            else:
                if step.out and step.res == "identity":      # R in place over R_prev
                    a.alias(step.out, step.res_src)
                elif step.out:
                    a.place(step.out, nbytes(step.out))
                place_output(step.act_out, i, step)
            outs = {step.out, step.act_out}
            for u in list(a.live):                            # inputs whose last reader was this step
                if u not in outs and last_use.get(u, -1) <= i:
                    a.live.discard(u)
        return a.result()

    def best(esz_of) -> tuple[dict[str, int], int]:
        """With ``overlap``, the lagged placement where it is no larger than the plain one (first fit that
        offers the dying input's rows first can lose to plain first fit), else the plain one."""
        return min((_smallest(lambda top: layout(esz_of, top, lagged))
                    for lagged in ((True, False) if overlap else (False,))), key=lambda plan: plan[1])

    bytes_ = set(byte_tensors(prog))
    off_f, total_f = best(lambda t: 4)
    off_i, total_i = best(lambda t: 2)
    stream8 = overlap and streamable(prog)
    if stream8:
        off_8, total_8 = _smallest(lambda top: _stream_layout(prog, top))
    else:
        off_8, total_8 = best(lambda t: 1 if t in bytes_ else 2)
    order = [t for t in off_f if t != "@head"]
    slot_of = {t: k for k, t in enumerate(order)}
    return SlotPlan(slot_of=slot_of, offsets_f=[off_f[t] for t in order] + [off_f["@head"]],
                    offsets_i=[off_i[t] for t in order] + [off_i["@head"]], total_f=total_f, total_i=total_i,
                    head_slot=len(order), overlap=overlap,
                    offsets_8=[off_8[t] for t in order] + [off_8["@head"]], total_8=total_8, stream8=stream8)
