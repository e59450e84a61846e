"""The answer is rendered as Markdown (marked) and sanitized (DOMPurify): code blocks and lists
render; a script, an event handler, an image or a javascript: link in a model's answer do not."""

from __future__ import annotations

from typing import Any

from tests.web.browser import Browser

RENDER = """async (text) => {
  const m = await import("/console/assets/veil.js");
  const box = document.createElement("div");
  m.renderMarkdown(box, text);
  return box.innerHTML;
}"""

ANSWER = """Here is code:

```python
print("<b>hi</b>")
```

- one
- two

<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">
[click](javascript:window.pwned=3) and [docs](https://example.org)
"""


def test_markdown_renders_code_and_drops_active_content(browser: Browser, console_url: str) -> None:
    page = browser.page()
    try:
        page.goto(console_url)
        html: Any = page.evaluate(RENDER, ANSWER)
        assert '<pre><code class="language-python">' in html
        assert "&lt;b&gt;hi&lt;/b&gt;" in html  # code is text, not markup
        assert "<li>one</li>" in html
        for active in ("<script", "onerror", "<img", "javascript:"):
            assert active not in html, active
        assert 'href="https://example.org"' in html and 'rel="noopener noreferrer"' in html
        assert page.evaluate("() => window.pwned ?? null") is None
    finally:
        page.close()
