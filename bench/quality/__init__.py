"""Answer quality: selection accuracy on the package's question set, tuned on one half, confirmed on the other."""
