"""
Everything SQL: the database runner and its engines, the migrations, one store per area.
"""
