"""Studies: host code that crosses learners, label models and tasks into tables of cells."""
