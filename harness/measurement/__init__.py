"""What is measured and how: speed tests, memory and energy meters, the roofline, accuracy
through lm-eval (with its sandboxes), load tests of a server's traffic, and cost."""
