"""The printable Online Security Code Card: legible PNG and PDF with the expiry date."""

from __future__ import annotations

import datetime
import io

import pytest
from PIL import Image
from pypdf import PdfReader

from sls_core.cardprint import PrintableCard, render_pdf, render_png
from sls_core.errors import InvalidInputError

CODES = tuple(f"{(i * 389 + 17) % 1000:03d}" for i in range(100))
CARD = PrintableCard(
    serial="OC-7K3M9Q",
    username="alice",
    expires_on=datetime.date(2026, 12, 13),
    codes=CODES,
)


def test_the_png_is_a_readable_image_of_sensible_size() -> None:
    image = Image.open(io.BytesIO(render_png(CARD)))
    assert image.format == "PNG"
    width, height = image.size
    assert width >= 1000
    assert height >= 700
    # High contrast: both near-black ink and white paper are there.
    extrema = image.convert("L").getextrema()
    assert extrema[0] < 40
    assert extrema[1] > 215


def test_the_pdf_holds_username_serial_expiry_and_every_index_code_pair_as_text() -> None:
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(render_pdf(CARD))).pages)
    assert "alice" in text
    assert "OC-7K3M9Q" in text
    assert "2026-12-13" in text
    words = text.split()
    for index, code in enumerate(CODES, start=1):
        at = [i for i, w in enumerate(words) if w == str(index)]
        assert any(i + 1 < len(words) and words[i + 1] == code for i in at), index


def test_the_repr_never_shows_the_codes() -> None:
    assert CODES[0] not in repr(CARD).replace("2026", "")
    assert "codes" not in repr(CARD)


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("codes", {"codes": ("12", *CODES[1:])}),
        ("codes", {"codes": ("12a", *CODES[1:])}),
        ("codes", {"codes": ()}),
        ("codes", {"codes": (*CODES, "123")}),
        ("serial", {"serial": ""}),
        ("username", {"username": ""}),
    ],
)
def test_bad_cards_name_the_field_and_never_quote_a_code(
    field: str, changes: dict[str, object]
) -> None:
    values: dict[str, object] = {
        "serial": CARD.serial,
        "username": CARD.username,
        "expires_on": CARD.expires_on,
        "codes": CARD.codes,
    }
    values.update(changes)
    with pytest.raises(InvalidInputError) as info:
        PrintableCard(**values)  # type: ignore[arg-type]
    assert info.value.field == field
    for code in CODES:
        assert code not in str(info.value)
