"""`recaption report`: a self-contained static HTML page with plots and a sample grid."""
