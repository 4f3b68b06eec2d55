"""ytdnn: the YouTube deep recommender (Covington, Adams, Sargin, RecSys 2016) as real software."""

__version__ = "0.1.0"
