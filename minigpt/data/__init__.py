"""Data: reading a corpus (files, folders, Hub datasets, built-in corpora), encoding it into token
files, chat conversations with their loss masks, and the batch loader that feeds training.

It imports the tokenizers, paths and errors below it, never models, training or generation.
"""
