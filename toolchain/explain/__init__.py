"""Explanations: which words drove a prediction, offline (gradients) and on the service (occlusion).

Two methods, one result type (:class:`toolchain.explain.result.Explanation`: a score per word and per
token, for one target class or one entity):

- **Integrated gradients** (:mod:`toolchain.explain.gradients`, needs torch): on the output of the
  encoder's embedding layer, from a baseline where every content token is ``[PAD]`` (special tokens
  kept) to the input, by Gauss-Legendre quadrature. The token scores sum to logit(input) - logit(baseline)
  of the target (the completeness check, reported with every explanation). It runs on the fp32 PyTorch
  model of a run dir or of an export dir's ``merged/``.
- **Occlusion** (:mod:`toolchain.explain.occlusion`, numpy and ONNX Runtime only: what the serving
  image has): leave one word out, on the served ONNX variant through the serving runtime; a word's score
  is how much the target class's probability drops without it. Its prediction is the served one.

Words are found as the service finds them for NER (:func:`toolchain.data.words.word_spans`: punctuation
alone, numbers, abbreviations and joined names kept whole); a word's score is the sum of its tokens'.
"""
