"""QR codes for IB Key activation: PNG and SVG (segno), the manual string printed under it,
and a reader (zxing-cpp) for the device simulator and the tests.

The payload is upper-case base32 behind ``SLS1:``, all in QR alphanumeric mode, so the code
stays small (about version 6 at error correction M) and scans easily from a screen.
"""

from __future__ import annotations

import io
import xml.sax.saxutils

import segno
from PIL import Image, ImageDraw, ImageFont

from sls_core.errors import InvalidInputError, InvalidInputTypeError

__all__ = ["decode_png", "render_png", "render_svg"]

_SCALE = 8
_BORDER = 4
_TEXT_HEIGHT = 56


def _symbol(payload: str) -> segno.QRCode:
    if not isinstance(payload, str):
        raise InvalidInputTypeError("payload", "must be a str")
    try:
        # Error correction M survives a smudged screen; never Micro QR (apps don't read it).
        return segno.make(payload, error="m", micro=False, boost_error=False)
    except (ValueError, segno.DataOverflowError) as e:
        raise InvalidInputError(
            "payload", f"cannot be encoded as a QR code: {type(e).__name__}"
        ) from None


def _check_manual(manual_code: str) -> str:
    if not isinstance(manual_code, str):
        raise InvalidInputTypeError("manual_code", "must be a str")
    if not manual_code.isascii() or not manual_code.replace("-", "").isalnum():
        raise InvalidInputError("manual_code", "must be ASCII letters, digits and '-'")
    return manual_code


def render_png(payload: str, manual_code: str) -> bytes:
    """The QR code with ``manual_code`` printed under it, as PNG bytes."""
    manual_code = _check_manual(manual_code)
    buffer = io.BytesIO()
    _symbol(payload).save(buffer, kind="png", scale=_SCALE, border=_BORDER)
    code = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    width = max(code.width, 16 * len(manual_code) + 2 * _SCALE * _BORDER)
    canvas = Image.new("L", (width, code.height + _TEXT_HEIGHT), 255)
    canvas.paste(code, ((width - code.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=30)
    text_width = draw.textlength(manual_code, font=font)
    draw.text(((width - text_width) / 2, code.height), manual_code, fill=0, font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def render_svg(payload: str, manual_code: str) -> str:
    """The QR code with ``manual_code`` printed under it, as an SVG document."""
    manual_code = _check_manual(manual_code)
    symbol = _symbol(payload)
    inner = symbol.svg_inline(scale=_SCALE, border=_BORDER)
    size, _ = symbol.symbol_size(scale=_SCALE, border=_BORDER)
    height = size + _TEXT_HEIGHT
    text = xml.sax.saxutils.escape(manual_code)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{height}"'
        f' viewBox="0 0 {size} {height}">'
        f'<rect width="{size}" height="{height}" fill="#fff"/>{inner}'
        f'<text x="{size / 2}" y="{size + 34}" font-family="monospace" font-size="28"'
        f' text-anchor="middle" fill="#000">{text}</text></svg>'
    )


def decode_png(png: bytes) -> str:
    """The text of the one QR code in a PNG (what a phone camera would read)."""
    import zxingcpp  # imported here: only readers (simulator, tests) need it

    try:
        image = Image.open(io.BytesIO(png))
        image.load()
    except Exception as e:  # Pillow raises several types for a bad image
        raise InvalidInputError("png", f"not a readable image: {type(e).__name__}") from None
    found = zxingcpp.read_barcodes(image, formats=zxingcpp.barcode_formats_from_str("QRCode"))
    if len(found) != 1:
        raise InvalidInputError("png", f"must hold exactly one QR code, found {len(found)}")
    return str(found[0].text)
