"""Offline English text: sentences from the standard library's help topics, and paraphrases.

:func:`sentences` splits ``pydoc_data.topics.topics`` (the texts behind ``help("if")`` and the
like, shipped with every CPython) into clean prose sentences: code blocks, grammar rules,
headings, tables and doctest lines are dropped, whitespace is normalised, and only sentences of
6 to 60 words that end like a sentence are kept, first occurrence only. The result is the same
on every run of one Python version (the help texts themselves differ between versions).
:func:`splits` cuts it into disjoint calibration, training and held-out sets with a seeded
shuffle. :func:`docstring_sentences` adds training text from the docstrings of the standard
library's own source files (read with :mod:`ast`, nothing imported): about seven times as many
sentences, for distillation only -- the held-out and calibration sets stay help-topic sentences.
:data:`PARAPHRASES` holds hand-written pairs of sentences that mean the same thing.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from pathlib import Path
from typing import NamedTuple

__all__ = ["PARAPHRASES", "Splits", "docstring_sentences", "sentences", "splits"]

MIN_WORDS = 6
MAX_WORDS = 60

_UNDERLINE = re.compile(r"^[*=\-~^#+]{3,}$")
_MARKUP_LINE = re.compile(r"::=|^>>>|^\.\.\.|^[+|]|^[=\-]+(\s+[=\-]+)+$")
_BULLET = re.compile(r"^(?:[*\-\u2022]|\d+\.|\(\d+\)|[a-z]\.)\s+")
_LABEL = re.compile(r"^(?:Note|Notes|Warning|Caution|See also|Tip|Hint|Important|Attention"
                    r"|(?:Changed|New|Added) in version [\d.]+|Deprecated since version [\d.]+):$")
_EMPHASIS = re.compile(  # *word* or **words** (Sphinx emphasis), not "*args" or "a * b"
    r"(?<![\w*])\*{1,2}(?=[\w'\"])([\w .,'\"\u2019-]+?)(?<=[\w'\"])\*{1,2}(?![\w*])")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?]\)))\s+(?=[\"'(]?[A-Z])")
_ABBREV_END = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|Mr|Dr|St|No|Fig|al)\.$")
_BAD = re.compile(r"::|\[\d+\]|https?://|[<>{}\\]|\s[.,;:]|==|->|\.\.\.")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of one help text. Blocks (runs of non-blank lines) holding markup --
    headings with their underline, tables, grammar rules, doctest lines -- are dropped, and so is
    an indented block that follows a line ending in ":" (a code example), unless that line is a
    label such as "Note:". A block is cut where the indentation changes (definition lists),
    except for the continuation lines of a bullet; bullet markers and emphasis asterisks are
    removed, lines are joined (hyphenated line breaks closed up)."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    out: list[str] = []
    prev_last, prev_indent = "", 0
    for block in filter(None, blocks):
        indent = _indent(block[0])
        after_colon = prev_last.endswith(":") and not _LABEL.match(prev_last)
        skip = (any(_UNDERLINE.match(ln.strip()) or _MARKUP_LINE.search(ln.strip())
                    for ln in block) or (after_colon and indent > prev_indent))
        prev_last, prev_indent = block[-1].strip(), (prev_indent if skip else indent)
        if skip:
            continue
        paragraph: list[str] = []
        column = None
        for line in block:
            stripped = line.strip()
            bullet = _BULLET.match(stripped)
            if paragraph and (bullet or _indent(line) != column):
                out.append(_join(paragraph))
                paragraph = []
            column = _indent(line) + (bullet.end() if bullet else 0)
            paragraph.append(stripped[bullet.end():] if bullet else stripped)
        out.append(_join(paragraph))
    return out


def _join(lines: list[str]) -> str:
    text = lines[0]
    for line in lines[1:]:
        closed_up = re.search(r"[a-z]-$", text) is not None and line[:1].islower()
        text = f"{text}{line}" if closed_up else f"{text} {line}"
    return " ".join(_EMPHASIS.sub(r"\1", text).split())


def _split_sentences(paragraph: str) -> list[str]:
    pieces = _SENTENCE_END.split(paragraph)
    merged: list[str] = []
    for piece in pieces:  # re-join pieces that were cut after an abbreviation such as "e.g."
        if merged and _ABBREV_END.search(merged[-1]):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def _is_clean(s: str) -> bool:
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not (s[0].isupper() or s[0] in "\"'(") or s[-1] not in ".!?" or _BAD.search(s):
        return False
    if s.count("(") != s.count(")") or s.count('"') % 2:
        return False
    letters = sum(c.isalpha() for c in s)
    return letters >= 0.7 * sum(not c.isspace() for c in s)  # prose, not symbols


@functools.lru_cache(maxsize=1)
def _sentences() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}  # insertion-ordered set
    for key in sorted(topics):
        for paragraph in _paragraphs(topics[key]):
            for s in _split_sentences(paragraph):
                if _is_clean(s):
                    seen.setdefault(s, None)
    return tuple(seen)


def sentences() -> list[str]:
    """All clean, distinct sentences of the help topics, in topic (sorted key) order."""
    return list(_sentences())


#: Standard-library folders whose docstrings are not prose about the library (tests, demos,
#: the IDLE and 2to3 tools, installed third-party packages).
_SKIPPED_DIRS = ("site-packages", "idlelib", "lib2to3", "turtledemo", "tests", "test")


@functools.lru_cache(maxsize=1)
def _docstring_sentences() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    topics = set(_sentences())
    seen: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts[:-1]
        if any(p in _SKIPPED_DIRS or p.startswith("test") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a file this Python cannot read or parse: skip it, not the corpus
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            for paragraph in _paragraphs(doc) if doc else ():
                for s in _split_sentences(paragraph):
                    if _is_clean(s) and s not in topics:
                        seen.setdefault(s, None)
    return tuple(seen)


def docstring_sentences() -> list[str]:
    """Clean, distinct prose sentences from the docstrings (module, class, function) of the
    standard library's Python sources, in file order, none of them also a help-topic sentence
    (so never a held-out or calibration one). ~11,000 on CPython 3.11; the first call parses
    ~600 files (~10 s), later calls are cached. Empty when the sources are not installed."""
    return list(_docstring_sentences())


class Splits(NamedTuple):
    """Disjoint lists of sentences."""

    calibration: list[str]
    train: list[str]
    heldout: list[str]


def splits(n_calibration: int = 128, n_train: int | None = None, n_heldout: int = 256,
           seed: int = 0) -> Splits:
    """Shuffle :func:`sentences` with ``random.Random(seed)`` and cut it into disjoint sets.

    The held-out set is taken first, then calibration, then training, so for one seed the
    held-out sentences do not change with ``n_calibration`` or ``n_train``. ``n_train=None``
    takes every remaining sentence. Raises ValueError when more sentences are asked for than
    exist (the message says how many do) or when a count is negative.
    """
    pool = list(_sentences())
    fixed = {"n_calibration": n_calibration, "n_heldout": n_heldout}
    if n_train is not None:
        fixed["n_train"] = n_train
    for name, n in fixed.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    if n_train is None:
        n_train = max(0, len(pool) - n_calibration - n_heldout)
    wanted = n_calibration + n_train + n_heldout
    if wanted > len(pool):
        raise ValueError(f"asked for {wanted} sentences ({n_calibration} calibration + {n_train} "
                         f"train + {n_heldout} held-out) but only {len(pool)} exist")
    random.Random(seed).shuffle(pool)
    heldout = pool[:n_heldout]
    calibration = pool[n_heldout:n_heldout + n_calibration]
    train = pool[n_heldout + n_calibration:n_heldout + n_calibration + n_train]
    return Splits(calibration=calibration, train=train, heldout=heldout)


#: Hand-written pairs (a, b): two sentences about programming that say the same thing in
#: different words. Used to check that a pruned encoder still puts paraphrases together.
PARAPHRASES: tuple[tuple[str, str], ...] = (
    ("A list in Python can grow and shrink after it is created.",
     "Python lists are mutable, so items may be added or removed later."),
    ("Tuples cannot be changed once they have been made.",
     "After creation, a tuple is immutable."),
    ("The for loop visits every item of a sequence in turn.",
     "A for statement iterates over each element of the sequence one by one."),
    ("Dictionaries map keys to values.",
     "A dict stores values that are looked up by their key."),
    ("An exception is raised when something goes wrong at run time.",
     "Errors that happen while the program runs are signalled by exceptions."),
    ("Use a try statement to catch an error and handle it.",
     "Errors can be caught and dealt with inside a try block."),
    ("Functions are defined with the def keyword.",
     "The keyword def introduces a new function definition."),
    ("A class bundles data together with the methods that act on it.",
     "Classes group state and the behaviour that operates on that state."),
    ("The program crashed because it ran out of memory.",
     "Memory was exhausted, which made the application fail."),
    ("This function returns the number of elements in a container.",
     "The function gives back how many items the collection holds."),
    ("Comments are ignored by the interpreter.",
     "The interpreter skips over comments without executing them."),
    ("Indentation decides which statements belong to a block.",
     "Blocks of code are delimited by how far the lines are indented."),
    ("Strings are sequences of characters.",
     "A string is made up of a series of characters."),
    ("The while loop keeps running as long as its condition is true.",
     "A while statement repeats its body until the condition becomes false."),
    ("Modules let you split a large program into several files.",
     "A big program can be divided across multiple files by using modules."),
    ("You import a module to use the functions it defines.",
     "To call the functions of a module, you first have to import it."),
    ("The garbage collector frees objects that are no longer referenced.",
     "Objects without any remaining references are reclaimed automatically."),
    ("Integers in Python have no fixed maximum size.",
     "Python's int type can hold arbitrarily large whole numbers."),
    ("Floating point numbers cannot represent every decimal fraction exactly.",
     "Some decimal values are only approximated by binary floats."),
    ("A generator produces its values lazily, one at a time.",
     "Generators yield items on demand instead of computing them all at once."),
    ("The break statement leaves the innermost loop immediately.",
     "Using break exits the closest enclosing loop right away."),
    ("Unit tests check that small pieces of code behave correctly.",
     "Small parts of a program are verified by writing unit tests."),
    ("The compiler translates source code into machine instructions.",
     "Source code is turned into instructions the processor can run by the compiler."),
    ("This variable is only visible inside the function.",
     "The scope of the variable is limited to the function body."),
    ("Reading a file that does not exist raises an error.",
     "Opening a missing file for reading fails with an exception."),
    ("Sorting the list puts its items in ascending order.",
     "After sorting, the elements of the list go from smallest to largest."),
    ("A set never contains the same element twice.",
     "Duplicates are not allowed in a set."),
    ("The method returns None when it has nothing to give back.",
     "If there is no result, the method's return value is None."),
    ("Keyword arguments are passed by name rather than by position.",
     "Arguments can be given by their names instead of their order."),
    ("Decorators wrap a function to change how it behaves.",
     "A decorator modifies a function's behaviour by wrapping it."),
    ("The server answers each request in a separate thread.",
     "Every incoming request is handled by its own thread on the server."),
    ("Version control keeps a history of every change to the code.",
     "A version control system records all modifications made to the source."),
    ("The query was slow because the table had no index.",
     "Without an index on the table, the database lookup took a long time."),
    ("Slicing creates a new list that holds part of the original.",
     "Taking a slice gives you a fresh list with a portion of the elements."),
    ("Division by zero is not allowed and raises an exception.",
     "Trying to divide a number by zero causes an error."),
    ("The interpreter reads and runs the program line by line.",
     "Statements are executed one after another by the interpreter."),
    ("Boolean values are either true or false.",
     "A bool can only take the values True and False."),
    ("The documentation explains how to install the package.",
     "Installation instructions for the library are given in its docs."),
    ("Copying a list with a slice does not copy the objects inside it.",
     "A sliced copy of a list is shallow: the contained objects are shared."),
    ("Threads share the memory of the process they belong to.",
     "All threads of one process have access to the same memory."),
    ("Caching results avoids computing the same value twice.",
     "Storing earlier answers saves recomputing them later."),
    ("The function raises a TypeError if the argument has the wrong type.",
     "Passing an argument of an unsuitable type makes the function throw a TypeError."),
)
