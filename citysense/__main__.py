from citysense.cli import console

console()
