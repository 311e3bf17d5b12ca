from citysense.cli import console

if __name__ == "__main__":  # not when a child process (multiprocessing's spawn) imports it
    console()
