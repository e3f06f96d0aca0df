"""Mesa models of markets and traffic in which agents act each step."""
