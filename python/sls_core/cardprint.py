"""Printable Online Security Code Card: the grid a user prints or saves, as PNG or PDF.

The Online Security Code Card is a temporary device: a grid of index numbers, each with a
3-digit code. At login the screen shows two index numbers and the user types both codes,
concatenated with no space. This module only draws the card the user holds; issuing the
codes and checking answers belong elsewhere.

The card carries the codes by design, but nothing else may: error messages name the field
and the rule and never quote a code, the ``repr`` of :class:`PrintableCard` hides the codes,
and this module never logs. The PDF keeps its text as text (so it prints sharply and can be
read back by a screen reader or a test) and is written in reportlab's invariant mode, so it
carries no creation time and the same card always gives the same bytes.
"""

from __future__ import annotations

import datetime
import functools
import io
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

from sls_core.errors import InvalidInputError, InvalidInputTypeError

__all__ = ["MAX_CODES", "TITLE", "PrintableCard", "render_pdf", "render_png"]

TITLE = "Online Security Code Card"
INSTRUCTION = "At login, type the two codes for the index numbers shown, with no space."
WARNING = "Keep this card private: anyone who has it and your password can log in as you."

MAX_CODES = 100
CODE_LENGTH = 3
MAX_SERIAL_LENGTH = 32
MAX_USERNAME_LENGTH = 64
# Index numbers run down the columns, ten to a column, as on the printed cards.
ROWS_PER_COLUMN = 10

_PRINTABLE_NO_SPACE = frozenset(string.ascii_letters + string.digits + string.punctuation)
_USERNAME_CHARACTERS = frozenset(string.ascii_letters + string.digits)


@dataclass(frozen=True)
class PrintableCard:
    """What a printed card shows. ``codes[i]`` is the code of index number ``i + 1``.

    Validated on construction, so a card that exists can always be drawn. ``codes`` may be
    given as any sequence of strings and is stored as a tuple; it is left out of ``repr`` so
    that a card in a log line or a traceback does not leak the grid.
    """

    serial: str
    username: str
    expires_on: datetime.date
    codes: tuple[str, ...] = field(repr=False)

    def __post_init__(self) -> None:
        _check_serial(self.serial)
        _check_username(self.username)
        _check_expires_on(self.expires_on)
        # Frozen: normalising a list into a tuple has to go through object.__setattr__.
        object.__setattr__(self, "codes", _checked_codes(self.codes))


def _check_serial(serial: object) -> None:
    if not isinstance(serial, str):
        raise InvalidInputTypeError("serial", "must be a str")
    if not 1 <= len(serial) <= MAX_SERIAL_LENGTH:
        raise InvalidInputError("serial", f"must be 1 to {MAX_SERIAL_LENGTH} characters")
    if not set(serial) <= _PRINTABLE_NO_SPACE:
        raise InvalidInputError("serial", "invalid characters: printable ASCII, no spaces")


def _check_username(username: object) -> None:
    # SLS usernames are letters and digits only; anything else never reaches a card.
    if not isinstance(username, str):
        raise InvalidInputTypeError("username", "must be a str")
    if not 1 <= len(username) <= MAX_USERNAME_LENGTH:
        raise InvalidInputError("username", f"must be 1 to {MAX_USERNAME_LENGTH} characters")
    if not set(username) <= _USERNAME_CHARACTERS:
        raise InvalidInputError("username", "invalid characters: ASCII letters and digits only")


def _check_expires_on(expires_on: object) -> None:
    # A datetime is a date too, but would print its time of day; the card shows a day.
    if not isinstance(expires_on, datetime.date) or isinstance(expires_on, datetime.datetime):
        raise InvalidInputTypeError("expires_on", "must be a datetime.date (not a datetime)")


def _checked_codes(codes: object) -> tuple[str, ...]:
    if isinstance(codes, (str, bytes)) or not isinstance(codes, Sequence):
        raise InvalidInputTypeError("codes", "must be a sequence of str, one per index number")
    if not 1 <= len(codes) <= MAX_CODES:
        raise InvalidInputError("codes", f"must hold 1 to {MAX_CODES} codes")
    for position, code in enumerate(codes):
        # Name the index number, never the value: the value is a secret.
        if not isinstance(code, str):
            raise InvalidInputTypeError(
                "codes", f"index number {position + 1}: must be a str (an int loses leading zeros)"
            )
        if len(code) != CODE_LENGTH or not code.isascii() or not code.isdigit():
            raise InvalidInputError(
                "codes", f"index number {position + 1}: must be exactly 3 ASCII digits"
            )
    return tuple(codes)


def _header_lines(card: PrintableCard) -> tuple[str, str, str]:
    return (
        f"Username: {card.username}",
        f"Serial: {card.serial}",
        f"Valid until {card.expires_on.isoformat()}",
    )


def _grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of a grid holding ``count`` codes, filled column by column."""
    rows = min(count, ROWS_PER_COLUMN)
    return rows, math.ceil(count / rows)


def _cells(card: PrintableCard) -> list[tuple[int, int, str, str]]:
    """(row, column, index number, code) of every cell, index numbers running down columns."""
    rows, _ = _grid_shape(len(card.codes))
    return [
        (position % rows, position // rows, str(position + 1), code)
        for position, code in enumerate(card.codes)
    ]


# --- PNG ----------------------------------------------------------------------------------

# 200 dpi: the 1700-pixel-wide card prints 8.5 inches wide at most, on A4 or US Letter.
PNG_DPI = 200
_PNG_WIDTH = 1700
_PNG_MARGIN = 70
_PNG_CELL_WIDTH = (_PNG_WIDTH - 2 * _PNG_MARGIN) // ROWS_PER_COLUMN
_PNG_CELL_HEIGHT = 72
_PNG_INDEX_WIDTH = 64
_BLACK = (0, 0, 0)
_WHITE = (255, 255, 255)
# Light enough that black index numbers on it keep a contrast ratio above 15:1.
_INDEX_SHADE = (225, 225, 225)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled scalable font: no font file to ship or find on the host.
    return ImageFont.load_default(size=size)


def render_png(card: PrintableCard) -> bytes:
    """The card as a PNG image (black on white, 200 dpi), ready to print or save."""
    rows, columns = _grid_shape(len(card.codes))
    title_font, header_font, note_font = _font(56), _font(34), _font(28)
    index_font, code_font = _font(28), _font(42)

    grid_top = 410
    grid_bottom = grid_top + rows * _PNG_CELL_HEIGHT
    height = grid_bottom + 140
    image = Image.new("RGB", (_PNG_WIDTH, height), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, _PNG_WIDTH - 11, height - 11), outline=_BLACK, width=4)

    left = _PNG_MARGIN
    draw.text((left, 60), TITLE, font=title_font, fill=_BLACK)
    for number, line in enumerate(_header_lines(card)):
        draw.text((left, 150 + number * 52), line, font=header_font, fill=_BLACK)
    draw.text((left, 320), INSTRUCTION, font=note_font, fill=_BLACK)

    for row, column, index_number, code in _cells(card):
        x = left + column * _PNG_CELL_WIDTH
        y = grid_top + row * _PNG_CELL_HEIGHT
        middle = y + _PNG_CELL_HEIGHT // 2
        draw.rectangle((x, y, x + _PNG_INDEX_WIDTH, y + _PNG_CELL_HEIGHT), fill=_INDEX_SHADE)
        index_right = x + _PNG_INDEX_WIDTH - 8
        draw.text((index_right, middle), index_number, font=index_font, fill=_BLACK, anchor="rm")
        code_centre = x + (_PNG_INDEX_WIDTH + _PNG_CELL_WIDTH) // 2
        draw.text((code_centre, middle), code, font=code_font, fill=_BLACK, anchor="mm")
    _draw_png_grid(draw, left, grid_top, rows, columns)

    draw.text((left, grid_bottom + 45), WARNING, font=note_font, fill=_BLACK)
    out = io.BytesIO()
    image.save(out, format="PNG", dpi=(PNG_DPI, PNG_DPI), optimize=True)
    return out.getvalue()


def _draw_png_grid(draw: ImageDraw.ImageDraw, left: int, top: int, rows: int, cols: int) -> None:
    right = left + cols * _PNG_CELL_WIDTH
    bottom = top + rows * _PNG_CELL_HEIGHT
    for row in range(rows + 1):
        y = top + row * _PNG_CELL_HEIGHT
        draw.line((left, y, right, y), fill=_BLACK, width=2)
    for column in range(cols + 1):
        x = left + column * _PNG_CELL_WIDTH
        # Thicker between columns, so each index number stays with its own code.
        draw.line((x, top, x, bottom), fill=_BLACK, width=4)


# --- PDF ----------------------------------------------------------------------------------

_PDF_MARGIN = 40.0
_PDF_CELL_WIDTH = (A4[0] - 2 * _PDF_MARGIN) / ROWS_PER_COLUMN
_PDF_CELL_HEIGHT = 24.0
_PDF_INDEX_WIDTH = 20.0
_PDF_FONT = "Helvetica"
_PDF_TITLE_FONT = "Helvetica-Bold"


def render_pdf(card: PrintableCard) -> bytes:
    """The card as a one-page A4 PDF with real text (the card also fits on US Letter)."""
    out = io.BytesIO()
    canvas = Canvas(out, pagesize=A4, invariant=1, pageCompression=1)
    canvas.setTitle(TITLE)
    canvas.setCreator("sls_core")
    canvas.setFillColorRGB(0, 0, 0)
    canvas.setStrokeColorRGB(0, 0, 0)

    page_height = A4[1]
    left = _PDF_MARGIN
    canvas.setFont(_PDF_TITLE_FONT, 20)
    canvas.drawString(left, page_height - 60, TITLE)
    canvas.setFont(_PDF_FONT, 12)
    for number, line in enumerate(_header_lines(card)):
        canvas.drawString(left, page_height - 88 - number * 17, line)
    canvas.setFont(_PDF_FONT, 10)
    canvas.drawString(left, page_height - 152, INSTRUCTION)

    rows, columns = _grid_shape(len(card.codes))
    grid_top = page_height - 168
    for row, column, index_number, code in _cells(card):
        x = left + column * _PDF_CELL_WIDTH
        y = grid_top - (row + 1) * _PDF_CELL_HEIGHT
        canvas.setFillColorRGB(0.88, 0.88, 0.88)
        canvas.rect(x, y, _PDF_INDEX_WIDTH, _PDF_CELL_HEIGHT, stroke=0, fill=1)
        canvas.setFillColorRGB(0, 0, 0)
        canvas.setFont(_PDF_FONT, 8)
        canvas.drawRightString(x + _PDF_INDEX_WIDTH - 2, y + 9, index_number)
        canvas.setFont(_PDF_FONT, 14)
        code_centre = x + (_PDF_INDEX_WIDTH + _PDF_CELL_WIDTH) / 2
        canvas.drawCentredString(code_centre, y + 7, code)

    grid_bottom = grid_top - rows * _PDF_CELL_HEIGHT
    canvas.setLineWidth(0.75)
    right = left + columns * _PDF_CELL_WIDTH
    for row in range(rows + 1):
        y = grid_top - row * _PDF_CELL_HEIGHT
        canvas.line(left, y, right, y)
    canvas.setLineWidth(1.5)
    for column in range(columns + 1):
        x = left + column * _PDF_CELL_WIDTH
        canvas.line(x, grid_top, x, grid_bottom)

    canvas.setFont(_PDF_FONT, 9)
    canvas.drawString(left, grid_bottom - 24, WARNING)
    canvas.showPage()
    canvas.save()
    return out.getvalue()
