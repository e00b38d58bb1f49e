"""scalelab controller side: the lab, inventory reading, the experiment runner, results and reports."""
