"""Decoding algorithms other than speculative decoding, on the same `LanguageModel`.

Each decoder is one jitted function (prefill + one `lax.while_loop`, fixed shapes,
batch >= 1, EOS per row) in its own module, with its paper cited. Per-step logits
rules (grammar masks, mirostat, ...) are `rules.LogitsRule`s applied by the model
transform `rules.RuleLM`, so every loop, speculative decoding included, decodes
under them unchanged; classifier-free guidance is the model transform
`guidance.GuidedLM` for the same reason.
"""
