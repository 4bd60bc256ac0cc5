"""tlearn"""
