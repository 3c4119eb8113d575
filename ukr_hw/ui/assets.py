"""The page's look: its CSS, the one script it runs (select the brush) and the local fonts of its theme."""

#: Local fonts with clear Cyrillic (no web-font download; print-style т/д/и, not the cursive forms).
SYSTEM_FONTS = ["system-ui", "Noto Sans", "DejaVu Sans", "Liberation Sans", "Arial", "sans-serif"]

CSS = """
.ukr-result { text-align: center; padding: 0.5rem 0 0.25rem; }
.ukr-result .glyph { font-size: 7.5rem; line-height: 1.05; font-weight: 600; color: var(--body-text-color); }
.ukr-result .case { display: inline-block; margin-top: 0.35rem; padding: 0.15rem 0.7rem; border-radius: 999px;
  font-size: 0.95rem; background: var(--color-accent-soft); color: var(--body-text-color); }
.ukr-result .meta { margin-top: 0.4rem; font-size: 0.8rem; color: var(--body-text-color-subdued); }
.ukr-result .hint { font-size: 1.05rem; color: var(--body-text-color-subdued); padding: 3.2rem 0; }
#ukr-symbols .wrap { display: grid !important; grid-template-columns: repeat(auto-fill, minmax(2.9rem, 1fr));
  gap: 0.3rem; }
#ukr-symbols label { justify-content: center; padding: 0.3rem 0.2rem !important; font-size: 1.15rem; min-width: 0; }
#ukr-symbols label input { display: none; }
#ukr-count { text-align: right; color: var(--body-text-color-subdued); }
#ukr-canvas { touch-action: none; }
"""

#: Start with the brush selected (Gradio's editor otherwise waits for a click on its draw tool); re-run after the
#: canvas is cleared. Clicking only when the brush is not active yet avoids opening its options pop-up.
SELECT_BRUSH_JS = """
() => {
  let tries = 0;
  const timer = setInterval(() => {
    const brush = document.querySelector('#ukr-canvas button[aria-label="Brush"]');
    tries += 1;
    if (brush) {
      if (!brush.classList.contains('highlight')) brush.click();
      clearInterval(timer);
    } else if (tries > 100) {
      clearInterval(timer);
    }
  }, 150);
}
"""
