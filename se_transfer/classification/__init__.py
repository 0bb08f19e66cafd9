"""Classification tasks: CIFAR-10/100 (Tables 4, 5) and Places365 (Table 6) training and evaluation, top-1/top-5."""
