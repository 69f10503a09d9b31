// Typesets the site's formulas with the KaTeX copy in javascripts/katex/ (npm "katex" 0.19.1, MIT, see its
// LICENSE): nothing is fetched from the network when the site is built or read.
// - Markdown pages: pymdownx.arithmatex (generic mode) wraps each $...$ / $$...$$ of the source in
//   <span class="arithmatex">\(...\)</span> or <div class="arithmatex">\[...\]</div>.
// - The notebook page: nbconvert leaves the markdown cells' $...$ and $$...$$ as they are written.
(function () {
  const arithmatex = [
    { left: "\\(", right: "\\)", display: false },
    { left: "\\[", right: "\\]", display: true },
  ];
  const notebook = [
    { left: "$$", right: "$$", display: true },
    { left: "$", right: "$", display: false },
  ];
  function typeset() {
    document.querySelectorAll(".arithmatex").forEach((el) =>
      renderMathInElement(el, { delimiters: arithmatex, throwOnError: false })
    );
    document.querySelectorAll(".jp-RenderedMarkdown").forEach((el) =>
      renderMathInElement(el, { delimiters: notebook, throwOnError: false })
    );
  }
  if (typeof document$ !== "undefined") document$.subscribe(typeset);  // Material: every page load
  else document.addEventListener("DOMContentLoaded", typeset);
})();
