"""Converters from other systems' pipeline files into natsflow pipeline files
(`natsflow import <system> FILE`)."""
