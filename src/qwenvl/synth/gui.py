"""Synthetic app screens: a title bar, text fields with labels, rows of buttons, checkboxes and plain
labels, light or dark theme; "Click the {label} button." -> the click point.

The answer is a Qwen2.5-VL grounding point, ```json [{"point_2d": [x, y], "label": "Save button"}], in
pixels of the resized input: it needs no tool-definition system prompt (hundreds of tokens a sample
for a small model) and the same parser reads it as the ScreenSpot scorer does (a point, else a box's
centre, else a computer_use tool call's coordinate)."""

from __future__ import annotations

import random

from PIL import ImageDraw

from .common import (background, bold_font, contrasting, font, font_files, json_answer, luminance, text_box,
                     text_length, to_input)
from .shapes import _Sketch

BUTTONS = ("OK", "Cancel", "Save", "Submit", "Login", "Search", "Next", "Back", "Delete", "Edit", "Send", "Open",
           "Close", "Help", "Settings", "Share", "Upload", "Download", "Reply", "Continue", "Sign up", "Apply",
           "Reset", "Refresh", "Confirm", "Buy", "Add", "Remove", "Play", "Pause", "Stop", "Export", "Print")
FIELDS = ("Name", "Email", "Password", "Username", "Phone", "Address", "City", "Country", "Message", "Subject",
          "Title", "Amount", "Date", "Code", "Comment", "Company", "Search")
CHECKS = ("Remember me", "Subscribe", "I agree", "Dark mode", "Notifications", "Show password", "Auto save",
          "Keep me signed in", "Private", "Sync")
TITLES = ("Mail", "Notes", "Shop", "Photos", "Music", "Maps", "Weather", "Bank", "Chat", "Files", "Calendar",
          "Account", "Profile", "Checkout", "Login", "Settings")
HINTS = ("Welcome back", "Fill in the form", "All fields are required", "Version 2.1", "Step 2 of 3",
         "No new messages", "Last saved today")
PROMPTS = {"button": "Click the {label} button.", "field": "Click the {label} field.",
           "checkbox": "Click the {label} checkbox."}


def _take(rng: random.Random, pool, used: set) -> str:
    choice = rng.choice([p for p in pool if p not in used] or list(pool))
    used.add(choice)
    return choice


def generate(rng: random.Random, opts):
    lo, hi = opts.size_range
    w, h = rng.randint(max(lo, 160), max(hi, 160)), rng.randint(max(lo, 160), max(hi, 160))
    insize = opts.insize((w, h))
    scale = insize[0] / w
    fs = max(8, round(rng.uniform(12, 18) / scale))
    path = rng.choice(font_files())
    f, fb = font(path, fs), font(bold_font(path), fs)
    dark = rng.random() < 0.3
    bg = tuple(rng.randint(15, 50) for _ in range(3)) if dark else tuple(rng.randint(225, 255) for _ in range(3))
    ink = contrasting(rng, bg, 150)
    accent = contrasting(rng, bg, 60)
    kind = rng.choice(("plain", "plain", "gradient"))
    img = background(rng, (w, h), bg, kind=kind, strength=6) if opts.draw else None
    d = ImageDraw.Draw(img) if opts.draw else _Sketch()
    pad = max(3, fs // 2)
    margin = max(4, int(w * rng.uniform(0.04, 0.08)))
    used: set = set()

    # Title bar.
    bar_h = int(fs * 2.2)
    d.rectangle((0, 0, w - 1, bar_h), fill=accent)
    title = _take(rng, TITLES, used)
    d.text((margin, (bar_h - fs) // 2), title, font=fb, fill=contrasting(rng, accent, 110))
    y = bar_h + pad * 2
    elements = []    # (kind, label, box)
    while True:
        kind = rng.choice(("field", "field", "buttons", "buttons", "checkbox", "hint"))
        row_h = fs + 2 * pad
        if y + row_h > h - pad:
            break
        if kind == "field":
            label = _take(rng, FIELDS, used)
            lw = text_length(f, label + ":")
            above = rng.random() < 0.4 or lw + 4 * fs > w - 2 * margin
            if above:
                d.text((margin, y), label, font=f, fill=ink)
                y += int(fs * 1.4)
                box = (margin, y, w - margin, y + row_h)
            else:
                d.text((margin, y + pad), label + ":", font=f, fill=ink)
                box = (int(margin + lw + fs), y, w - margin, y + row_h)
            if box[3] > h - pad:
                break
            d.rectangle(box, fill=bg if rng.random() < 0.5 else tuple(min(255, c + 12) for c in bg), outline=ink)
            if rng.random() < 0.4:       # placeholder text inside the field, greyed
                grey = tuple((a + b) // 2 for a, b in zip(ink, bg))
                d.text((box[0] + pad, box[1] + pad), f"Enter {label.lower()}", font=f, fill=grey)
            elements.append(("field", label, box))
        elif kind == "buttons":
            x = margin
            for _ in range(rng.randint(1, 3)):
                label = _take(rng, BUTTONS, used)
                tw = text_length(fb, label)
                box = (int(x), y, int(x + tw + 3 * pad), y + row_h)
                if box[2] > w - margin:
                    used.discard(label)
                    break
                fill = accent if rng.random() < 0.6 else contrasting(rng, bg, 40)
                d.rounded_rectangle(box, radius=rng.randint(0, pad), fill=fill,
                                    outline=ink if rng.random() < 0.3 else None)
                text_ink = (255, 255, 255) if luminance(fill) < 140 else (0, 0, 0)
                d.text((box[0] + 1.5 * pad, box[1] + pad), label, font=fb, fill=text_ink)
                elements.append(("button", label, box))
                x = box[2] + rng.randint(pad, 4 * pad)
        elif kind == "checkbox":
            label = _take(rng, CHECKS, used)
            s = fs
            b = (margin, y + pad, margin + s, y + pad + s)
            d.rectangle(b, outline=ink, width=max(1, fs // 10))
            if rng.random() < 0.5:
                d.line((b[0] + 2, b[1] + s // 2, b[0] + s // 2, b[3] - 2, b[2] - 2, b[1] + 2), fill=ink,
                       width=max(1, fs // 8))
            t = text_box(f, (b[2] + pad, y + pad), label)
            if t[2] > w - 2:
                break
            d.text((b[2] + pad, y + pad), label, font=f, fill=ink)
            elements.append(("checkbox", label, (b[0], min(b[1], t[1]), t[2], max(b[3], t[3]))))
        else:
            hint = rng.choice(HINTS)
            if text_length(f, hint) < w - 2 * margin:
                d.text((margin, y + pad), hint, font=f, fill=ink)
        y += row_h + rng.randint(pad, 3 * pad)
    if not elements:       # a screen too small for any row still gets one button under the bar
        label = _take(rng, BUTTONS, used)
        box = (margin, bar_h + 2, int(margin + text_length(fb, label) + 2 * pad),
               min(h - 1, bar_h + 2 + fs + pad))
        d.rectangle(box, fill=accent)
        d.text((box[0] + pad, box[1]), label, font=fb, fill=contrasting(rng, accent, 110))
        elements.append(("button", label, box))
    qa, asked = [], []
    for _ in range(opts.turns):
        fresh = [e for e in elements if e not in asked] or elements
        kind, label, box = rng.choice(fresh)
        asked.append((kind, label, box))
        x1, y1, x2, y2 = box
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        name = f"{label} {kind}"
        ans = json_answer([{"point_2d": to_input(centre, insize, (w, h)), "label": name}])
        qa.append((PROMPTS[kind].format(label=label), ans, {"bbox": [x1, y1, x2 + 1, y2 + 1], "kind": kind,
                                                             "label": label}))
    return img, (w, h), qa
