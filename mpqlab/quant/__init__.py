"""Quantizers, observers, quantized layers and the policy that places them in a model.

Vocabulary used everywhere: ``scale``, ``zero_point``, ``q_min``, ``q_max``, ``ch_axis``,
``bits``, ``w_bits`` (weights), ``a_bits`` (input activations of a layer).

Design (measuring is separate from mapping):
- observers/calibrators look at data and return ``(scale, zero_point)``;
- quantizers (``Quantizer`` subclasses) map a tensor onto its quantized values;
- layers (``QuantConv2d``, ``QuantLinear``) only hold a weight and an activation quantizer;
- ``quantize_model(model, policy, ...)`` swaps layers in, using factories that build quantizers,
  so a new method plugs in without editing the layers.
"""
