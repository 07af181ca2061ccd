"""The activation arena of an exported C program: every tensor's slot and each slot's byte offset in
float, integer (int16) and 8-bit mode, planned like tflite-micro's memory planner (live ranges, first fit), with the
bare-metal option of letting an output overwrite the rows of its dying input (one thread per image)."""

from __future__ import annotations

from dataclasses import dataclass

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


class _NoFit(Exception):
    pass


def lag_bytes(step: ConvStep, out_row: int, in_row: int) -> int:
    """How far below its input an output may start when it overwrites the input's consumed rows.

    Rows are computed in order (all 32-channel blocks of a row, then the next row); the pixels of
    output row oy (padded row oy + 1) are written while output row oy still reads padded input rows
    from oy * stride - pad + 1 on, so the output's padded rows up to oy + 1 must end at or below that
    input row: ``out_base + (oy + 2) * out_row <= in_base + (oy * stride - pad + 1) * in_row``; the
    zero bottom border row (oh + 1) is written per block, before the next block reads the last rows.
    """
    oh = step.out_hw[0]
    first = [oy * step.stride - step.pad + 1 for oy in range(oh)]
    lag = max((oy + 2) * out_row - first[oy] * in_row for oy in range(oh))
    # the bottom border row (padded row oh + 1) is zeroed per block, while later blocks still read
    # the last row's inputs
    return max(lag, (oh + 2) * out_row - first[-1] * in_row)


def plan_slots(prog: Program, overlap: bool = False) -> SlotPlan:
    """Place every tensor in the arena by liveness (first fit by offset), in float, int16 and 8-bit mode
    (element sizes 4, 2, and 1 for convolution inputs / 2 for the residual stream).

    Tensors are NHWC with a one-pixel zero border; a tensor lives from the step that writes it to the
    last step that reads it. An identity-shortcut block writes its output R over its input R (each
    element is read before it is written). With ``overlap`` (single-threaded runs, rows in order), the
    activation a step writes may also start below the step's conv input by :func:`lag_bytes` and
    overwrite the input rows already consumed, when that input dies at the step.
    """
    last_use: dict[str, int] = {}
    for i, step in enumerate(prog.steps):
        for t in (step.src, step.res_src):
            if t:
                last_use[t] = i
    slot_of: dict[str, int] = {}
    order: list[str] = []

    def layout(esz_of, top: int | None, lagged: bool) -> tuple[dict[str, int], int] | None:
        """First fit from offset 0 up (top None), or highest fit below ``top`` (None if it fails); with
        ``lagged``, a dying input's rows are offered to the step's output first."""
        off: dict[str, int] = {}
        size: dict[str, int] = {}
        live: set[str] = set()

        def place(t: str, nbytes: int, lag_src: str | None = None, lag: int = 0) -> None:
            size[t] = nbytes
            need = -(-nbytes // ALIGN) * ALIGN
            if top is None:
                cands = sorted({0, *(-(-(off[u] + size[u]) // ALIGN) * ALIGN for u in live)})
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

        def nbytes(t: str) -> int:
            c, h, w = prog.tensors[t]
            return (h + 2) * (w + 2) * c * esz_of(t)

        def place_output(t: str, i: int, step: ConvStep) -> None:
            if lagged and last_use.get(step.src) == i and step.src != step.res_src:
                c, _, w = prog.tensors[t]
                ci, _, wi = prog.tensors[step.src]
                place(t, nbytes(t), step.src,
                      lag_bytes(step, (w + 2) * c * esz_of(t), (wi + 2) * ci * esz_of(step.src)))
            else:
                place(t, nbytes(t))

        place("x", nbytes("x"))
        for i, step in enumerate(prog.steps):
            if step.epilogue == "head":
                place("@head", step.out_hw[0] * step.out_hw[1] * prog.num_classes * 4)
                continue
            if step.epilogue == "act":
                place_output(step.out, i, step)
            else:
                if step.out and step.res == "identity":      # R in place over R_prev
                    off[step.out], size[step.out] = off[step.res_src], size[step.res_src]
                    live.add(step.out)
                elif step.out:
                    place(step.out, nbytes(step.out))
                place_output(step.act_out, i, step)
            outs = {step.out, step.act_out}
            for u in list(live):                              # inputs whose last reader was this step
                if u not in outs and last_use.get(u, -1) <= i:
                    live.discard(u)
        total = max(off[t] + size[t] for t in off)
        return off, -(-total // ALIGN) * ALIGN

    def best_of(esz_of, lagged: bool) -> tuple[dict[str, int], int]:
        """The smaller of first fit and the smallest arena highest fit manages (bisection on its size)."""
        plan = layout(esz_of, None, lagged)
        lo, hi = 0, plan[1]
        while hi - lo > ALIGN:
            mid = (lo + hi) // 2 // ALIGN * ALIGN
            try:
                got = layout(esz_of, mid, lagged)
                plan, hi = (got, got[1]) if got[1] < plan[1] else (plan, mid)
            except _NoFit:
                lo = mid
        return plan

    def best(esz_of) -> tuple[dict[str, int], int]:
        """With ``overlap``, the lagged placement where it is no larger than the plain one (first fit that
        offers the dying input's rows first can lose to plain first fit), else the plain one."""
        return min((best_of(esz_of, lagged) for lagged in ((True, False) if overlap else (False,))),
                   key=lambda plan: plan[1])

    bytes_ = set(byte_tensors(prog))
    off_f, total_f = best(lambda t: 4)
    off_i, total_i = best(lambda t: 2)
    off_8, total_8 = best(lambda t: 1 if t in bytes_ else 2)
    order = [t for t in off_f if t != "@head"]
    slot_of = {t: k for k, t in enumerate(order)}
    return SlotPlan(slot_of=slot_of, offsets_f=[off_f[t] for t in order] + [off_f["@head"]],
                    offsets_i=[off_i[t] for t in order] + [off_i["@head"]], total_f=total_f, total_i=total_i,
                    head_slot=len(order), overlap=overlap,
                    offsets_8=[off_8[t] for t in order] + [off_8["@head"]], total_8=total_8)
