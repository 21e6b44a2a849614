"""`minigpt bench`: what a user waits for, measured on this machine (training, generation, prepare,
fine-tuning, serving, time budgets, nanoGPT side by side), whole processes where it matters.

It may import anything in the package; nothing in the package imports it but the command line.
"""
