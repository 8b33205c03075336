"""QR rendering for IB Key activation: what a phone camera reads is the payload."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from sls_core.errors import InvalidInputError
from sls_core.qr import decode_png, render_png, render_svg

PAYLOAD = "SLS1:" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" * 4
MANUAL = "K7QM-4TZ9-HX3P"


def test_the_png_reads_back_as_the_payload_with_a_real_qr_reader() -> None:
    png = render_png(PAYLOAD, MANUAL)
    assert decode_png(png) == PAYLOAD
    image = Image.open(io.BytesIO(png))
    assert image.height > image.width  # the manual string sits under the code


def test_the_svg_is_well_formed_and_shows_the_manual_string() -> None:
    svg = render_svg(PAYLOAD, MANUAL)
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    texts = [e.text for e in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts == [MANUAL]


def test_a_png_without_exactly_one_code_is_refused() -> None:
    blank = io.BytesIO()
    Image.new("L", (200, 200), 255).save(blank, format="PNG")
    with pytest.raises(InvalidInputError, match="exactly one QR code"):
        decode_png(blank.getvalue())
    with pytest.raises(InvalidInputError, match="not a readable image"):
        decode_png(b"\x89PNG broken")


def test_bad_manual_strings_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="manual_code"):
        render_png(PAYLOAD, "<script>")
