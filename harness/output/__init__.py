"""What results become: result files on disk, tables, comparisons, trends, reports and
plots, labels for models, published reference figures, and progress on the screen."""
