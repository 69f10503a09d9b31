// MathJax for the notebook's $...$ formulas (the guide pages write their formulas as plain text)
window.MathJax = {
  tex: { inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]] },
  options: { skipHtmlTags: ["script", "noscript", "style", "textarea", "pre", "code"] },
};
document$.subscribe(() => { if (window.MathJax.typesetPromise) MathJax.typesetPromise(); });
