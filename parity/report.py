"""The parity report: one row per aligned module pair, in execution order; the first failure marked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from vidport.parity.align import Pair
from vidport.parity.metrics import Comparison
from vidport.parity.tolerances import Tolerance


@dataclass
class Row:
    pair: Pair
    calls: int = 0
    comparisons: list[Comparison | None] = field(default_factory=list)
    status: str = "pass"  # pass | fail | not run
    note: str = ""
    order: int = -1  # completion order of the native module's first call
    fail_order: int | None = None  # completion order of the first failing call
    fail_call: int | None = None
    input_cmp: Comparison | None = None  # inputs of the first failing call

    @property
    def worst(self) -> Comparison | None:
        cmps = [c for c in self.comparisons if c is not None]
        if not cmps:
            return None
        failing = [c for c in cmps if not c.passed]
        pool = failing or cmps
        return max(pool, key=lambda c: (c.rel_l2 if c.rel_l2 == c.rel_l2 else float("inf")))

    @property
    def diagnosis(self) -> str:
        """Where to look, for the first failing module."""
        if self.status != "fail":
            return ""
        if self.input_cmp is not None and not self.input_cmp.passed:
            return ("its input already differs: the divergence is in code between modules (functional ops "
                    "or an unaligned module) before it")
        if self.input_cmp is not None:
            return "its input matches: the divergence is inside this module (weights or math)"
        return self.note

    def as_dict(self) -> dict:
        d = {"native": self.pair.native, "reference": list(self.pair.ref), "adapter": self.pair.adapter,
             "aligned_by": self.pair.how, "status": self.status, "calls": self.calls, "note": self.note}
        w = self.worst
        d["worst"] = w.as_dict() if w else None
        d["per_call_max_abs"] = [c.max_abs if c else None for c in self.comparisons]
        if self.fail_call is not None:
            d["first_failing_call"] = self.fail_call
        if self.input_cmp is not None:
            d["input_of_failing_call"] = self.input_cmp.as_dict()
        return d


@dataclass
class Report:
    rows: list[Row]
    dtype: str
    tolerance: Tolerance
    reference: str = "reference"
    native: str = "native"
    seed: int = 0
    saved: str | None = None

    @property
    def failures(self) -> list[Row]:
        return sorted((r for r in self.rows if r.status == "fail"), key=lambda r: r.fail_order)

    @property
    def first_failure(self) -> Row | None:
        f = self.failures
        return f[0] if f else None

    @property
    def passed(self) -> bool:
        compared = [r for r in self.rows if r.status != "not run"]
        return bool(compared) and self.first_failure is None

    def row(self, native: str) -> Row:
        for r in self.rows:
            if r.pair.native == native:
                return r
        raise KeyError(f"no aligned pair for native module {native!r}")

    def summary(self) -> str:
        n = sum(r.status != "not run" for r in self.rows)
        first = self.first_failure
        if first is None:
            return f"PASS: {n} aligned modules of {self.native} match {self.reference} ({self.dtype})"
        w = first.worst
        detail = first.note or (w.reason if w else "")
        return (f"FAIL: first divergent module: native {first.pair.native} <-> reference {first.pair.ref_name} "
                f"(call {first.fail_call}): {detail}; {first.diagnosis}; {len(self.failures)} of {n} modules fail")

    def table(self) -> str:
        head = f"{'':2} {'native module':<34} {'reference module':<44} {'calls':>5} {'max_abs':>9} " \
               f"{'mean_abs':>9} {'rel_l2':>9} {'cosine':>10} {'nan/inf':>7}  status"
        lines = [f"parity: {self.native} vs {self.reference}  dtype={self.dtype}  seed={self.seed}  "
                 f"tolerance={self.tolerance.as_dict()}", head, "-" * len(head)]
        first = self.first_failure
        for r in self.rows:
            w = r.worst
            mark = ">>" if r is first else ""
            ref = (r.pair.ref_name or "<model>") + ("" if r.pair.adapter == "same" else f" [{r.pair.adapter}]")
            if w is None:
                nums = f"{'':>9} {'':>9} {'':>9} {'':>10} {'':>7}"
            else:
                nonfinite = w.nan_native + w.inf_native
                nums = f"{w.max_abs:9.2e} {w.mean_abs:9.2e} {w.rel_l2:9.2e} {w.cosine:10.7f} {nonfinite:>7}"
            lines.append(f"{mark:2} {r.pair.native or '<model>':<34.34} {ref:<44.44} {r.calls:>5} {nums}  {r.status}")
        lines.append(self.summary())
        if self.saved:
            lines.append(f"activations of the first failing module saved to {self.saved}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        first = self.first_failure
        return {
            "reference": self.reference, "native": self.native, "dtype": self.dtype, "seed": self.seed,
            "tolerance": self.tolerance.as_dict(), "passed": self.passed,
            "first_failure": None if first is None else {
                "native": first.pair.native, "reference": list(first.pair.ref), "call": first.fail_call,
                "diagnosis": first.diagnosis},
            "saved": self.saved,
            "modules": [r.as_dict() for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=float)
