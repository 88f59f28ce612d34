"""
Coverage-guided fuzzing (atheris, libFuzzer) of what reads hostile bytes first: the DD frame
decoder, the order API's envelope, and the consignment API's form parsing. ``make fuzz`` runs
each target for a million inputs (``--runs N`` for more or fewer) in its own process and prints
what it ran; an input that raises anything but the target's own refusal is a finding, saved by
libFuzzer as ``crash-*`` in ``.fuzz/`` with the traceback on the terminal.

    python -m tests.fuzz_targets [--runs N] [dd envelope consignment]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ("dd", "envelope", "consignment")
#: a merchant's keys for the consignment target (what it decrypts with)
AES_KEY = "0123456789abcdef0123456789abcdef"
MD5_KEY = "fedcba9876543210fedcba9876543210"


def dd(data: bytes) -> None:
    from lnt.wire import ChecksumError, FrameDecoder, FramingError, Request, Response

    for kind in (Request, Response):
        decoder = FrameDecoder(kind)  # type: ignore[type-var]
        try:
            # fed whole, then again in two pieces: the decoder keeps state across feeds
            for _ in decoder.feed(data):
                pass
            half = len(data) // 2
            decoder = FrameDecoder(kind)  # type: ignore[type-var]
            for chunk in (data[:half], data[half:]):
                for _ in decoder.feed(chunk):
                    pass
        except (FramingError, ChecksumError):
            pass


def envelope(data: bytes) -> None:
    from lnt.crypto.envelope import EnvelopeError, open_message

    try:
        open_message(data)
    except EnvelopeError:
        pass


def consignment(data: bytes) -> None:
    from urllib.parse import parse_qsl

    from lnt.crypto.consignsign import ConsignError, decrypt_field, verify_sign
    from lnt.web.consignapi import OrderQuery, QueryBuyRequest, Refused, ToCardRequest

    try:
        params = dict(parse_qsl(data.decode("utf-8"), keep_blank_values=True,
                                strict_parsing=False, max_num_fields=64))
    except (UnicodeDecodeError, ValueError):
        return  # the API answers "parameters are not UTF-8" / a malformed form
    verify_sign(params, MD5_KEY)
    for request in (ToCardRequest, QueryBuyRequest, OrderQuery):
        # the API parses a request only when its required fields are all there
        if any(not params.get(name) for name in request.REQUIRED):
            continue
        try:
            request.parse(params)
        except Refused:
            pass
    for name in ("cardNumber", "cardPassword"):
        if params.get(name):
            try:
                decrypt_field(params[name], AES_KEY, name)
            except ConsignError:
                pass


def run_one(target: str, runs: int) -> None:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    with atheris.instrument_imports():
        import lnt.crypto.consignsign
        import lnt.crypto.envelope
        import lnt.domain.inputs
        import lnt.web.consignapi
        import lnt.wire  # noqa: F401
    work = Path(".fuzz") / target
    work.mkdir(parents=True, exist_ok=True)
    fn = globals()[target]
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-artifact_prefix={work}/",
                   "-print_final_stats=1", str(work)], fn)
    atheris.Fuzz()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1_000_000, help="inputs per target [1000000]")
    p.add_argument("--one", choices=TARGETS, help=argparse.SUPPRESS)
    p.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} [all]")
    args = p.parse_args()
    if args.one:
        run_one(args.one, args.runs)
        return 0
    targets = args.targets or list(TARGETS)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown target {sorted(unknown)[0]} (one of {', '.join(TARGETS)})")
    findings = 0
    for target in targets:
        start = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "tests.fuzz_targets", "--one", target,
                              "--runs", str(args.runs)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": "0"})
        stats = [line for line in out.stderr.splitlines()
                 if line.startswith(("stat::number_of_executed_units", "Done "))]
        executed = next((line.split(":")[-1].strip() for line in stats
                         if "number_of_executed_units" in line), "?")
        took = time.monotonic() - start
        if out.returncode != 0:
            findings += 1
            print(f"fuzz {target}: FINDING after {took:.0f} s (exit {out.returncode})")
            print("\n".join(out.stderr.splitlines()[-40:]))
        else:
            print(f"fuzz {target}: {executed} inputs in {took:.0f} s, no finding")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
