// The answer as Markdown: parsed by marked, sanitized by DOMPurify (the model's output is not
// trusted: no script, no event handler, no remote image or link target can run or load).
import DOMPurify from "dompurify";
import { Marked } from "marked";

const marked = new Marked({ gfm: true, breaks: false, async: false });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("rel", "noopener noreferrer");
    node.setAttribute("target", "_blank");
  }
});

export function renderMarkdown(into: HTMLElement, text: string): void {
  const html = marked.parse(text) as string;
  into.innerHTML = DOMPurify.sanitize(html, { FORBID_TAGS: ["img", "style", "form", "input"], ALLOWED_URI_REGEXP: /^(?:https?|mailto):/i });
}
