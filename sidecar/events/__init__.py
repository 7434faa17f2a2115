"""Inference events: the record of one inference, and the bounded queue that hands it on."""
