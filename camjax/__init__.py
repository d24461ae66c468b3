"""camjax: Class Activation Mapping in JAX/Flax."""
