"""Helpers for the headless Chromium tests."""
from __future__ import annotations


def open_tab(page, name: str):
    """Click a top-level tab (ui.app.TABS key) and return a locator scoped to its panel, so labels
    that recur in other tabs ("Model", "Base model") resolve to this tab's component."""
    from ui.app import TABS

    label = TABS[name][1].split(" ", 1)[1]
    page.get_by_role("tab", name=label).first.click()
    panel = page.locator(f"#tab-{name}")
    panel.wait_for(state="visible")
    return panel
