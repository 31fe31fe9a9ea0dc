"""Pure math: memories, Delta Gradient Descent, CMS levels, surprise. Each fast path has a slow reference
written to read like the paper's equations; tests check they agree in outputs and gradients."""
