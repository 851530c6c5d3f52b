"""specjax: speculative decoding of language models in JAX.

One SD method = a drafter x a tree / length policy x a verifier (`Method`);
`speculative_generate` runs it inside one jitted `lax.while_loop`.
"""

from specjax import theory, trees, verify
from specjax.decode import (
    Method,
    autoregressive_generate,
    speculative_generate,
)
from specjax.sampling import GREEDY, Sampling

__all__ = ["GREEDY", "Method", "Sampling", "autoregressive_generate", "speculative_generate",
           "theory", "trees", "verify"]
__version__ = "0.1.0"
