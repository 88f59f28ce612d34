"""
Card scripts: the order API's C{toreader} commands and C{reqinfo} answers (source document
3.2.3.1, note 1), and the platform's script that identifies the card on the reader.

A C{toreader} entry is hex of: seq (1) | len (1) | command (len) | expected status word (2) |
next seq when the answer ends with it (1) | next seq otherwise (1); seq 0 means done, the first
step is seq 1. A C{reqinfo} entry is hex of: seq (1) | len (1) | the reader's answer (len), the
answer ending in its status word. The terminal runs the script on its reader and sends every
answer back; the platform follows the same path through the script to read them.

The identify script (L{IDENTIFY}) works on both kinds of card the platform loads:

    01 FF CA 00 00 00       GET DATA (UID) of any contactless card     -> 02
    02 00 A4 00 00 02 DDF1  SELECT the LNT directory: a CPU card?      -> 03, else 06 (M1)
    03 00 B0 95 08 08       READ BINARY EF15, offset 8: logical number -> 04
    04 00 A4 00 00 02 ADF1  SELECT the purse application              -> 05
    05 80 5C 00 02 04       GET BALANCE                                -> done
    06 FF B0 00 04 10       READ BINARY block 4 (M1 issuer block)      -> done

(C{FF CA} and C{FF B0} are the PC/SC pseudo-APDUs of contactless readers.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lnt.domain.records import CardIdentity, CardKind
from lnt.messages.statuswords import SW_OK
from lnt.wire import decode_bcd

MAX_STEPS = 32


class ScriptError(ValueError):
    """A script or its answers do not parse or do not fit; the text says where."""


@dataclass(frozen=True)
class Step:
    seq: int
    command: bytes
    expect: bytes
    next_ok: int
    next_else: int

    def encode(self) -> str:
        return (bytes((self.seq, len(self.command))) + self.command + self.expect
                + bytes((self.next_ok, self.next_else))).hex()

    @classmethod
    def decode(cls, text: str) -> Step:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ScriptError(f"toreader entry {text!r} is not hex") from None
        if len(raw) < 6 or len(raw) != 2 + raw[1] + 4:
            raise ScriptError(f"toreader entry {text!r} has a wrong length")
        n = raw[1]
        return cls(raw[0], raw[2 : 2 + n], raw[2 + n : 4 + n], raw[4 + n], raw[5 + n])


@dataclass(frozen=True)
class Answer:
    seq: int
    data: bytes

    @property
    def sw(self) -> bytes:
        return self.data[-2:]

    def encode(self) -> str:
        return (bytes((self.seq, len(self.data))) + self.data).hex()

    @classmethod
    def decode(cls, text: object) -> Answer:
        if not isinstance(text, str):
            raise ScriptError("reqinfo entries are hex strings")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ScriptError(f"reqinfo entry {text[:40]!r} is not hex") from None
        if len(raw) < 4 or len(raw) != 2 + raw[1]:
            raise ScriptError(f"reqinfo entry {text[:40]!r} has a wrong length")
        return cls(raw[0], raw[2:])


IDENTIFY: tuple[Step, ...] = (
    Step(1, bytes.fromhex("FFCA000000"), SW_OK, 2, 0),
    Step(2, bytes.fromhex("00A4000002DDF1"), SW_OK, 3, 6),
    Step(3, bytes.fromhex("00B0950808"), SW_OK, 4, 0),
    Step(4, bytes.fromhex("00A4000002ADF1"), SW_OK, 5, 0),
    Step(5, bytes.fromhex("805C000204"), SW_OK, 0, 0),
    Step(6, bytes.fromhex("FFB0000410"), SW_OK, 0, 0),
)


def run(steps: list[Step] | tuple[Step, ...], execute: Callable[[bytes], bytes]) -> list[Answer]:
    """The terminal's side: run the script on a reader, collect the answers."""
    by_seq = {s.seq: s for s in steps}
    answers: list[Answer] = []
    seq = steps[0].seq if steps else 0
    while seq:
        if len(answers) >= MAX_STEPS:
            raise ScriptError("script does not end")
        step = by_seq.get(seq)
        if step is None:
            raise ScriptError(f"script jumps to missing step {seq}")
        data = execute(step.command)
        answers.append(Answer(seq, data))
        seq = step.next_ok if data[-2:] == step.expect else step.next_else
    return answers


def identify(answers: list[Answer], steps: tuple[Step, ...] = IDENTIFY) -> CardIdentity:
    """The platform's side: follow C{answers} through the identify script."""
    by_seq = {s.seq: s for s in steps}
    expected = steps[0].seq
    got: dict[int, bytes] = {}
    for answer in answers:
        if expected == 0:
            raise ScriptError("reqinfo has answers after the script ended")
        if answer.seq != expected:
            raise ScriptError(f"reqinfo answers step {answer.seq} where step {expected} comes")
        step = by_seq[expected]
        got[answer.seq] = answer.data
        expected = step.next_ok if answer.sw == step.expect else step.next_else
    if expected != 0:
        raise ScriptError(f"reqinfo stops before step {expected}")
    if 1 not in got or got[1][-2:] != SW_OK:
        raise ScriptError("no card on the reader (GET DATA failed)")
    uid = got[1][:-2]
    if not 4 <= len(uid) <= 8:
        raise ScriptError("card UID has a wrong length")
    physical = uid.rjust(8, b"\x00").hex()
    try:
        if 5 in got:  # CPU path
            logical = decode_bcd(got[3][:8])
            if len(got[3]) != 10 or len(got[5]) != 6:
                raise ScriptError("CPU card answers have wrong lengths")
            balance = int.from_bytes(got[5][:4], "big")
            return CardIdentity(CardKind.CPU, logical, physical, balance)
        if 6 in got and got[6][-2:] == SW_OK:  # M1 path
            if len(got[6]) != 18:
                raise ScriptError("M1 issuer block has a wrong length")
            return CardIdentity(CardKind.M1, decode_bcd(got[6][:8]), physical, None)
    except ValueError as e:
        if isinstance(e, ScriptError):
            raise
        raise ScriptError("logical card number is not BCD") from None
    raise ScriptError("the card did not answer the identify script")
