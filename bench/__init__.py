"""`make bench`: the appliance under load, side by side with the designs it replaces."""
