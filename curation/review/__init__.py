"""The annotators' review: the queue of flagged records, and (later) the web page over it."""
