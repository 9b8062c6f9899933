"""Helpers for the headless Chromium tests."""
from __future__ import annotations


def open_tab(page, name: str):
    """Click a top-level tab (ui.app.TABS key) and return a locator scoped to its panel, so labels
    that recur in other tabs ("Model", "Base model") resolve to this tab's component. Gradio renders a tab that was
    not open when it is first selected, so the panel is returned once that render has settled (see `settled`)."""
    from ui.app import TABS

    label = TABS[name][1].split(" ", 1)[1]
    page.get_by_role("tab", name=label).first.click()
    return settled(page.locator(f"#tab-{name}"), limit_ms=5_000)  # a running job never goes quiet


# Resolves once the element's subtree has had no DOM change for `quiet_ms` (at most `limit_ms`).
SETTLED_JS = """(element, [quietMs, limitMs]) => new Promise(resolve => {
  let timer;
  const done = () => { observer.disconnect(); clearTimeout(limit); resolve(); };
  const observer = new MutationObserver(() => { clearTimeout(timer); timer = setTimeout(done, quietMs); });
  observer.observe(element, {subtree: true, childList: true, attributes: true, characterData: true});
  timer = setTimeout(done, quietMs);
  const limit = setTimeout(done, limitMs);
})"""


def open_accordion(scope, label: str):
    """Open a closed gr.Accordion and return its content once gradio has rendered it. Gradio 6 renders a closed
    accordion's children only after it opens (`render_previously_invisible_children`), a moment later on a busy
    machine: a value typed before that is replaced by the component's initial one."""
    button = scope.locator(".label-wrap", has_text=label).first
    button.click()
    return settled(button.locator("xpath=following-sibling::div[@data-testid='accordion-content']"))


def settled(locator, quiet_ms: int = 300, limit_ms: int = 10_000):
    """The locator, once visible and its DOM quiet: a value typed while gradio still renders is lost."""
    locator.wait_for(state="visible")
    locator.element_handle().evaluate(SETTLED_JS, [quiet_ms, limit_ms])
    return locator
