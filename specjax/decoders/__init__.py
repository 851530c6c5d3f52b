"""Decoding algorithms other than speculative decoding, on the same `LanguageModel`.

Each decoder is one jitted function (prefill + one `lax.while_loop`, fixed shapes,
batch >= 1, EOS per row) in its own module, with its paper cited. Per-step logits
rules are `rules.LogitsRule`s applied by the model transform `rules.RuleLM`, and
classifier-free guidance is the model transform `guidance.GuidedLM`, so every loop,
speculative decoding included, decodes under them unchanged and stays lossless for
the processed law.

  rules          LogitsRule and RuleLM: a stateful logits rule along every path
  grammar        JSON Schema -> token automaton (`json_schema` compiles the
                 character DFA), GrammarRule: grammar-constrained decoding
  asap           grammar-aligned sampling, ASAp (Park et al. 2024); host-driven: its
                 trie of estimates grows between samples, around one jitted step
  mirostat       Mirostat v1 / v2 (Basu et al. arXiv:2007.14966), logits rules
  guidance       classifier-free guidance (Sanchez et al. arXiv:2306.17806)
  beam_search    beam search and diverse beam search (Vijayakumar et al.
                 arXiv:1610.02424)
  momentum       momentum decoding (Lan et al. arXiv:2212.02175)
  superposed     superposed decoding (Shen et al. arXiv:2405.18400)
  exact_extract  the most probable answer span, exactly (Castel et al.
                 arXiv:2108.05857)
  rerank         RankGen-style reranking with a pluggable scorer (Krishna et al.
                 arXiv:2205.09726)
  monitor        monitor-guided decoding for code (Agrawal et al. arXiv:2306.10763):
                 jedi between jitted segments
  metrics        n-gram repetition and diversity of outputs
"""
