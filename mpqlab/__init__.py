"""mpqlab: an interactive workbook on neural-network quantization.

The package is kept light to import: ``import mpqlab`` does not import torch.
Import the submodule you need, e.g. ``from mpqlab.quant.uniform import fake_quantize``.
"""

__version__ = "0.1.0"
